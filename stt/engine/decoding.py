"""Decoding: pure functions of (model, tokenizer, jobs) -> texts. No threads, no queue.

Short windows. Whisper's encoder is built for 30 s windows, and a stock transcribe()
pays for 30 s (about 300 ms here) even for 1 s of speech. CTranslate2's encoder takes
shorter inputs, so the audio is padded with silence only up to a window of
max(STT_MIN_WINDOW_SECONDS, audio + 2 s), in 2 s buckets. Much shorter windows make
Whisper loop or drop words; 10 s keeps its accuracy at a third of the cost. The
decoder is capped in tokens in proportion to the audio, and looped tails are trimmed.
A final that still loops, says one phrase twice, or ends in words the aligner could give
no time (written past the speech), is redone by faster-whisper's stock long-form path,
unless its options say its caller has a cheaper retry (redo_long_form False: a stream's
final with context, decoded again without it); then it comes back marked suspicious.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Sequence

import numpy as np

from stt.engine.hallucinations import is_hallucination
from stt.engine.numbers import space_digits, space_digits_in_parts, split_evenly
from stt.engine.types import SAMPLE_RATE, DecodeOptions, JobKind, Piece, Word

# Below this RMS (about -74 dBFS) audio is digital silence and is not decoded:
# Whisper tends to invent text ("Thank you.") for empty input.
SILENCE_RMS = 2e-4
# The shortest encoder window (STT_MIN_WINDOW_SECONDS by default).
DEFAULT_MIN_WINDOW = 10.0
# Window buckets grow in steps of this many seconds; the window keeps at least this
# much silence after the audio, so the model sees where speech ends.
WINDOW_STEP = 2
WINDOW_TAIL = 2.0
MAX_WINDOW = 30
# Token budget: generous for fast speech (English runs at 3-5 tokens/s).
TOKENS_PER_SECOND = 6.0
TOKENS_SLACK = 8
# Whisper's own thresholds for "this was not speech" and "this is a loop".
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0
MAX_COMPRESSION_RATIO = 2.4
# Whisper's decoder holds 448 tokens; at most half of them are context, as in training.
MAX_TOKENS = 448
MAX_CONTEXT_TOKENS = MAX_TOKENS // 2 - 1
# A word aligned to at most this long has no audio of its own; a final that ends in this
# many such words was written past the speech (tiny.en saying a phrase again, squeezed
# into the audio's last instant). A single short word is speech: a word cut off.
COLLAPSED_WORD_SECONDS = 0.02
MIN_COLLAPSED_TAIL = 3


class Decodable(Protocol):
    """What decoding needs of a job: its audio, its options and its kind (a speculative
    final is decoded as a final)."""

    audio: np.ndarray
    options: DecodeOptions
    kind: JobKind


class Decoded(NamedTuple):
    text: str
    words: tuple[Word, ...]
    pieces: tuple[Piece, ...]  # the words after the forced prefix
    language: str | None
    confidence: float
    prefix_forced: bool
    redone: bool = False  # a suspicious short-window final redone the long way
    suspicious: bool = False  # one left as it is (DecodeOptions.redo_long_form False)


def window_seconds(audio_seconds: float, min_window: float = DEFAULT_MIN_WINDOW) -> int:
    """The encoder window for this much audio: a bucket of WINDOW_STEP seconds."""
    needed = max(min_window, audio_seconds + WINDOW_TAIL)
    return int(min(MAX_WINDOW, math.ceil(needed / WINDOW_STEP) * WINDOW_STEP))


def bucket(audio: np.ndarray, min_window: float = DEFAULT_MIN_WINDOW) -> int | None:
    """The window audio is decoded in; None when it is longer than one window."""
    seconds = audio.size / SAMPLE_RATE
    if seconds + WINDOW_TAIL > MAX_WINDOW:
        return None
    return window_seconds(seconds, min_window)


def token_cap(audio: np.ndarray) -> int:
    """The most tokens the decoder may write for this audio."""
    return int(audio.size / SAMPLE_RATE * TOKENS_PER_SECOND) + TOKENS_SLACK


def is_silent(audio: np.ndarray) -> bool:
    return audio.size == 0 or rms(audio) < SILENCE_RMS


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def trim_repetition(tokens: list[int], hit_cap: bool) -> list[int]:
    """Cut a decoding loop ("A B C. A B C. A B") after its first round.

    A tail that repeats a unit of 2+ tokens is a loop when it ran into the token cap,
    or when the unit comes back 3 or more times; real speech rarely does either.
    """
    length = len(tokens)
    for period in range(2, length // 2 + 1):
        start = length - period  # walk back while the sequence is periodic
        while start > 0 and tokens[start - 1] == tokens[start - 1 + period]:
            start -= 1
        repeated = length - start  # tokens covered by the periodic tail, first unit included
        rounds = repeated / period
        if rounds >= 2 and (hit_cap or rounds >= 3):
            return tokens[: start + period]
    return tokens


def is_doubled(tokens: list[int]) -> bool:
    """The whole output is one phrase of 4+ tokens said twice ("And so my fellow Americans.
    And so my fellow Americans." from 2.6 s of audio): how the short-window decode of
    tiny models hallucinates on a clip; the stock long-form decode does not."""
    half, odd = divmod(len(tokens), 2)
    return not odd and half >= 4 and tokens[:half] == tokens[half:]


def says_it_twice(text: str) -> bool:
    """The text is one phrase of 3+ words said twice, case and punctuation aside ("And so,
    my fellow Americans. And so, my fellow Americans"): the same hallucination as
    is_doubled, which a prompt can dress with different punctuation in each half."""
    words = re.findall(r"[\w']+", text.lower())
    half, odd = divmod(len(words), 2)
    return not odd and half >= 3 and words[:half] == words[half:]


def has_collapsed_tail(words: Sequence[Word]) -> bool:
    """The last MIN_COLLAPSED_TAIL or more words have no duration: text the decoder wrote
    after the speech ("... are used. Today, only platforms 1 and 3 are" with the second
    phrase all at the audio's end)."""
    collapsed = 0
    for word in reversed(words):
        if not _has_no_duration(word):
            break
        collapsed += 1
    return collapsed >= MIN_COLLAPSED_TAIL


def is_timeless(words: Sequence[Any]) -> bool:
    """Most of a segment's words, MIN_COLLAPSED_TAIL or more, have no duration: the stock
    path wrote it into the last instant of the audio (on jfk's first phrase with a prompt:
    "And so, my fellow Americans." then " We'll see you guys next time." twice, six words
    in 0.18 s and in 0.06 s). Without word times nothing is judged."""
    collapsed = sum(1 for word in words if _has_no_duration(word))
    return collapsed >= MIN_COLLAPSED_TAIL and 2 * collapsed >= len(words)


def _has_no_duration(word: Any) -> bool:
    """Aligned to at most COLLAPSED_WORD_SECONDS: no audio of its own."""
    return word.end - word.start <= COLLAPSED_WORD_SECONDS


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


def word_pieces(tokenizer: Any, tokens: list[int]) -> tuple[Piece, ...]:
    """The tokens grouped into words, each with the tokens that spell it. A piece's text
    writes digit strings digit by digit (stt/engine/numbers.py); its tokens stay the
    model's own (they are forced as the decoder's prefix)."""
    if not tokens:
        return ()
    words, word_tokens = tokenizer.split_to_word_tokens(list(tokens) + [tokenizer.eot])
    kept = [(w, tuple(t)) for w, t in zip(words, word_tokens) if t and t[0] != tokenizer.eot]
    texts = space_digits_in_parts([w for w, _ in kept])
    return tuple(Piece(text, t) for text, (_, t) in zip(texts, kept))


def timed_words(aligned: Sequence[tuple[str, float, float, float]]) -> tuple[Word, ...]:
    """Words from (word as aligned, start, end, probability), blank ones dropped. A
    digit string is written digit by digit (stt/engine/numbers.py), one word per digit
    sharing the aligned word's time evenly ("90210." -> "9" "0" "2" "1" "0.")."""
    written = space_digits_in_parts([word for word, _, _, _ in aligned])
    return tuple(
        Word(text, start, end, probability)
        for spelled, (_, word_start, word_end, probability) in zip(written, aligned) if spelled.strip()
        for text, start, end in split_evenly(spelled, word_start, word_end)
    )


def merge_punctuation(alignment: list[dict]) -> list[dict]:
    """Attach punctuation to its word, as Whisper prints it (faster-whisper's rule)."""
    if not alignment:
        return []
    from faster_whisper.transcribe import merge_punctuations

    merged = [dict(word) for word in alignment]
    merge_punctuations(merged, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    return [w for w in merged if w["word"]]


def features(model: Any, audio: np.ndarray, window: int) -> np.ndarray:
    """The log-mel features of `audio` padded with silence to `window` seconds."""
    padded = np.zeros(window * SAMPLE_RATE, dtype=np.float32)
    padded[: audio.size] = audio
    mel = model.feature_extractor(padded, padding=0)
    return np.ascontiguousarray(mel[:, : window * 100])


@dataclass
class _Draft:
    """One job's short-window result before word alignment; tokens include the prefix."""

    text: str
    tokens: list[int]
    score: float
    suspicious: bool = False  # loops or says it all twice


def decode_batch(model: Any, tokenizer: Any, jobs: Sequence[Decodable], multilingual: bool,
                 min_window: float = DEFAULT_MIN_WINDOW, encoder_to_cpu: bool = False) -> list[Decoded]:
    """Decode jobs that share options (beam, word times, language) and window bucket in
    one encoder/decoder pass. `tokenizer` is the model's for the jobs' language;
    `encoder_to_cpu` moves the encoder output off the GPU (several GPU workers)."""
    options = jobs[0].options
    window = bucket(jobs[0].audio, min_window)
    if window is None or (multilingual and options.language is None) or options.temperature > 0:
        # Longer than one window, the language must be detected first, or sampling at
        # a temperature was asked for: the stock long-form path does all three.
        return [decode_stock(model, tokenizer, job, multilingual) for job in jobs]
    encoded = _encode(model, jobs, window, encoder_to_cpu)
    drafts = _generate(model, tokenizer, jobs, encoded)
    alignments = _align(model, tokenizer, jobs, drafts, encoded) if options.word_timestamps else None
    outputs: list[Decoded] = []
    for index, (job, draft) in enumerate(zip(jobs, drafts)):
        alignment = alignments[index] if alignments is not None else []
        output = _assemble(tokenizer, job, draft, alignment, multilingual)
        suspicious = draft.suspicious or (job.kind is not JobKind.PARTIAL and has_collapsed_tail(output.words))
        if suspicious and job.options.redo_long_form:
            output = decode_stock(model, tokenizer, job, multilingual)._replace(redone=True)
        elif suspicious:
            output = output._replace(suspicious=True)
        outputs.append(output)
    return [without_hallucination(output, job.audio) for output, job in zip(outputs, jobs)]


def without_hallucination(decoded: Decoded, audio: np.ndarray) -> Decoded:
    """An empty result instead of text the decoder invented (stt/engine/hallucinations.py)."""
    if decoded.text and is_hallucination(decoded.text, decoded.confidence, audio.size / SAMPLE_RATE):
        return decoded._replace(text="", words=(), pieces=(), confidence=0.0)
    return decoded


def context_tokens(tokenizer: Any, prompt: str) -> list[int]:
    """The decoder's "previous text" section for `prompt`: its last MAX_CONTEXT_TOKENS
    tokens after <|startofprev|>, as Whisper was trained; empty without a prompt."""
    if not prompt.strip():
        return []
    return [tokenizer.sot_prev] + tokenizer.encode(" " + prompt.strip())[-MAX_CONTEXT_TOKENS:]


def _encode(model: Any, jobs: Sequence[Decodable], window: int, to_cpu: bool) -> Any:
    import ctranslate2

    stacked = np.stack([features(model, job.audio, window) for job in jobs])
    return model.model.encode(ctranslate2.StorageView.from_array(stacked), to_cpu=to_cpu)


def _generate(model: Any, tokenizer: Any, jobs: Sequence[Decodable], encoded: Any) -> list[_Draft]:
    """Greedy or beam decoding of the whole batch, each job capped in tokens; a final that
    loops or says it all twice is marked suspicious (to be redone)."""
    base_prompt = (context_tokens(tokenizer, jobs[0].options.prompt)
                   + list(tokenizer.sot_sequence) + [tokenizer.no_timestamps])
    prompts = [base_prompt + list(job.options.prefix) for job in jobs]
    caps = [token_cap(job.audio) for job in jobs]
    generated = model.model.generate(
        encoded, prompts, beam_size=jobs[0].options.beam_size,
        max_length=min(MAX_TOKENS, max(len(p) + c for p, c in zip(prompts, caps))),
        return_scores=True, return_no_speech_prob=True,
        suppress_blank=True, suppress_tokens=[-1],
    )
    drafts: list[_Draft] = []
    for job, result, cap in zip(jobs, generated, caps):
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        prefix_length = len(job.options.prefix)
        hit_cap = len(tokens) - prefix_length >= cap - 1
        tokens = tokens[:prefix_length] + trim_repetition(tokens[prefix_length:], hit_cap)
        score = result.scores[0] if result.scores else 0.0
        text = tokenizer.decode(tokens).strip()
        if result.no_speech_prob > NO_SPEECH_PROB and score < LOW_LOGPROB:
            tokens, text = [], ""
        suspicious = job.kind is not JobKind.PARTIAL and bool(text) and is_suspicious(tokenizer, text, tokens,
                                                                                     prefix_length)
        drafts.append(_Draft(text, tokens, score, suspicious))
    return drafts


def is_suspicious(tokenizer: Any, text: str, tokens: list[int], prefix_length: int) -> bool:
    """A short-window result that loops or says it all twice (to be redone the long way).
    Said twice counts the forced prefix too: a final whose committed words begin the
    phrase ("And so" + " my fellow Americans. And so my fellow Americans.") says the
    whole text twice, though what the decoder wrote after them does not."""
    return compression_ratio(text) > MAX_COMPRESSION_RATIO or any(
        is_doubled(part) or says_it_twice(tokenizer.decode(part)) for part in (tokens, tokens[prefix_length:]))


def _align(model: Any, tokenizer: Any, jobs: Sequence[Decodable], drafts: list[_Draft],
           encoded: Any) -> list[list[dict]]:
    """Word timings of the drafts with text, found on the encoder output of the whole batch
    (not of suspicious ones: they are redone, or decoded again by their caller)."""
    aligned_tokens = [draft.tokens if not draft.suspicious else [] for draft in drafts]
    alignments: list[list[dict]] = [[] for _ in jobs]
    indices = [i for i, tokens in enumerate(aligned_tokens) if tokens]
    if indices:
        found = model.find_alignment(
            tokenizer, [aligned_tokens[i] if i in indices else [tokenizer.eot] for i in range(len(jobs))],
            encoded, [max(2, job.audio.size // 160) for job in jobs],
        )
        for i in indices:
            alignments[i] = found[i]
    return alignments


def _assemble(tokenizer: Any, job: Decodable, draft: _Draft, alignment: list[dict],
              multilingual: bool) -> Decoded:
    pieces = word_pieces(tokenizer, draft.tokens[len(job.options.prefix):])
    words = timed_words([(w["word"], float(w["start"]), float(w["end"]), float(w["probability"]))
                         for w in merge_punctuation(alignment)])
    if words:
        confidence = sum(w.probability for w in words) / len(words)
    else:
        confidence = math.exp(draft.score) if draft.text else 0.0
    language = job.options.language if multilingual else "en"
    return Decoded(space_digits(draft.text), words, pieces, language, round(min(1.0, confidence), 4),
                   bool(job.options.prefix))


# Whisper's temperature fallback: a decode that loops or is unsure is redone hotter.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def decode_stock(model: Any, tokenizer: Any, job: Decodable, multilingual: bool) -> Decoded:
    """faster-whisper's own long-form transcription: with temperature fallback, or
    sampled at the one temperature the options ask for."""
    options = job.options
    temperatures = (options.temperature,) if options.temperature > 0 else FALLBACK_TEMPERATURES
    segments, info = model.transcribe(
        job.audio,
        temperature=list(temperatures),
        language=options.language if multilingual else "en",
        beam_size=options.beam_size,
        word_timestamps=options.word_timestamps,
        condition_on_previous_text=False,
        initial_prompt=options.prompt.strip() or None,
        vad_filter=False,
    )
    segments = [segment for segment in segments if not is_timeless(segment.words or ())]
    tokens = [t for s in segments for t in s.tokens if t < tokenizer.eot]
    words = timed_words([(w.word, float(w.start), float(w.end), float(w.probability))
                         for s in segments for w in (s.words or ())])
    text = space_digits(" ".join(s.text.strip() for s in segments if s.text.strip()))
    if words:
        confidence = sum(w.probability for w in words) / len(words)
    else:
        scored = [s.avg_logprob for s in segments if s.text.strip()]
        confidence = math.exp(sum(scored) / len(scored)) if scored else 0.0
    return without_hallucination(Decoded(text, words, word_pieces(tokenizer, tokens), info.language,
                                         round(min(1.0, confidence), 4), False), job.audio)
