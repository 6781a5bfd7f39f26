"""stt/openai_api/chunks.py: a file cut into short jobs at pauses, trimmed to its speech,
the VAD running only a chunk ahead."""

import numpy as np
import pytest

from stt.openai_api.chunks import SAMPLE_RATE, SPEECH_PAD_SECONDS, Chunk, iter_chunks
from stt.vad import SileroVad
from tests.conftest import AUDIO_DIR, load_audio


def clip(name: str) -> np.ndarray:
    return load_audio(AUDIO_DIR / name)


def gap(seconds: float, seed: int = 1) -> np.ndarray:
    """Room tone, not digital silence."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * 0.002).astype(np.float32)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def seconds(chunks: list[Chunk]) -> list[tuple[float, float]]:
    return [(c.start / SAMPLE_RATE, c.end / SAMPLE_RATE) for c in chunks]


class CountingVad(SileroVad):
    """The real VAD, counting the samples it is fed."""

    fed: list[int] = []

    def process(self, samples):
        CountingVad.fed.append(samples.size)
        return super().process(samples)


def test_sentences_apart_become_chunks_cut_between_them_and_the_pauses_are_left_out():
    sentences = [clip("fw_libri_61_left.wav"), clip("ps_austen_0870.wav"), clip("pv_platforms.wav")]
    audio = np.concatenate([sentences[0], gap(1.2), sentences[1], gap(1.2, 2), sentences[2], gap(3.0, 3)])
    spans, at = [], 0.0
    for sentence in sentences:
        spans.append((at, at + sentence.size / SAMPLE_RATE))
        at += sentence.size / SAMPLE_RATE + 1.2
    chunks = list(iter_chunks(audio, 12.0))
    for start, end in seconds(chunks):
        assert any(a - SPEECH_PAD_SECONDS - 0.15 <= start < end <= b + SPEECH_PAD_SECONDS + 0.15 for a, b in spans), \
            f"the chunk {start:.2f}-{end:.2f} s lies within one sentence ({spans})"
    assert {next(i for i, (a, b) in enumerate(spans) if a - 0.5 <= s < b) for s, _ in seconds(chunks)} == {0, 1, 2}
    for chunk in chunks:
        edges = np.concatenate([audio[chunk.start:chunk.start + 1600], audio[chunk.end - 1600:chunk.end]])
        assert rms(edges) < 0.2 * rms(sentences[1]), "chunks start and end in quiet, not in a word"


def test_a_long_talk_becomes_chunks_within_the_limit_with_the_vad_a_chunk_ahead():
    talk = clip("long_gates_ted.wav")
    CountingVad.fed = []
    chunks = iter_chunks(talk, 12.0, CountingVad)
    first = next(chunks)
    assert sum(CountingVad.fed) <= 12.0 * SAMPLE_RATE + 512, "the first chunk needs the first 12 s only"
    rest = [first, *chunks]
    assert all(0 < c.end - c.start <= 12.0 * SAMPLE_RATE for c in rest)
    assert all(a.end <= b.start for a, b in zip(rest, rest[1:]))
    covered = sum(c.end - c.start for c in rest) / talk.size
    assert covered > 0.9, "a talk is nearly all speech: almost nothing is left out"
    assert sum(CountingVad.fed) <= talk.size


class FixedVad:
    """Every window scored the same (the chunking's rules, apart from the real VAD)."""

    def __init__(self, score: float) -> None:
        self.score = score

    def process(self, samples):
        return [self.score] * (samples.size // 512)


def test_without_any_pause_the_cut_is_the_quietest_moment():
    tone = np.sin(np.arange(20 * SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE).astype(np.float32) * 0.5
    tone[int(10.0 * SAMPLE_RATE):int(10.1 * SAMPLE_RATE)] *= 0.01
    chunks = list(iter_chunks(tone, 12.0, lambda: FixedVad(0.9)))
    assert 10.0 <= chunks[0].end / SAMPLE_RATE <= 10.1 and chunks[1].start == chunks[0].end


def test_audio_without_speech_gives_no_chunk():
    assert list(iter_chunks(gap(30.0), 12.0)) == []
    assert list(iter_chunks(gap(30.0), 12.0, lambda: FixedVad(0.1))) == []


@pytest.mark.parametrize("length", [0.05, 3.0, 12.0])
def test_speech_within_the_limit_is_one_chunk(length):
    audio = gap(length)
    assert list(iter_chunks(audio, 12.0, lambda: FixedVad(0.9))) == [Chunk(0, audio.size)]
