"""stt/engine/speech_engine.py: one real model per process, inference off the event loop."""

import asyncio
import time

import numpy as np
import pytest

from stt.engine import DecodeOptions, SpeechEngine
from stt.engine.breaker import BreakerState
from stt.engine.priority import BACKGROUND
from stt.errors import SttError
from stt.evaluation import word_error_rate
from tests.conftest import JFK_TEXT, silence
from tests.stt.engine.helpers import unique


class TestTranscription:
    async def test_a_final_of_real_speech_is_the_known_sentence_with_word_times(self, engine, jfk_audio):
        transcript = await engine.transcribe(jfk_audio, DecodeOptions.final("en", word_timestamps=True))
        assert word_error_rate(JFK_TEXT, transcript.text) == 0.0
        assert transcript.language == "en"
        assert 0.5 < transcript.confidence <= 1.0
        assert len(transcript.words) == len(JFK_TEXT.split())
        starts = [w.start for w in transcript.words]
        assert starts == sorted(starts)
        assert all(0 <= w.start <= w.end <= 11.1 for w in transcript.words)
        assert all(0 < w.probability <= 1 for w in transcript.words)
        assert transcript.audio_seconds == pytest.approx(11.0, abs=0.01)

    async def test_a_partial_is_fast_settings_and_has_no_words(self, engine, jfk_audio):
        transcript = await engine.transcribe(jfk_audio[:48000], DecodeOptions.partial("en"))
        assert "fellow americans" in transcript.text.lower()
        assert transcript.words == ()

    async def test_digital_silence_gives_no_text(self, engine):
        transcript = await engine.transcribe(silence(2), DecodeOptions.final("en", True))
        assert transcript.text == "" and transcript.words == ()

    @pytest.mark.parametrize("kind", ["white", "quiet white", "mains hum", "clicks"])
    async def test_noise_gives_no_text(self, engine, kind):
        rng = np.random.default_rng(0)
        noise = {
            "white": rng.standard_normal(32000) * 0.05,
            "quiet white": rng.standard_normal(32000) * 0.005,
            "mains hum": 0.1 * np.sin(2 * np.pi * 50 * np.arange(32000) / 16000),
            "clicks": (rng.random(32000) > 0.999) * 0.5,
        }[kind].astype(np.float32)
        for options in (DecodeOptions.partial("en"), DecodeOptions.final("en", True)):
            assert (await engine.transcribe(noise, options)).text == ""

    async def test_the_event_loop_keeps_running_during_inference(self, engine, jfk_audio):
        gaps: list[float] = []

        async def ticker():
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        await engine.transcribe(unique(jfk_audio), DecodeOptions.final("en", True))
        ticking.cancel()
        assert len(gaps) > 10
        assert max(gaps) < 0.1, f"event loop stalled for {max(gaps):.3f} s"


async def test_a_final_that_comes_out_doubled_is_redone_the_long_way(engine, jfk_audio):
    # 2.6 s of "And so my fellow Americans": tiny.en's short-window decode says it twice.
    clip = jfk_audio[int(0.152 * 16000):int(2.768 * 16000)]
    result = await engine.transcribe(clip, DecodeOptions.final("en", word_timestamps=True))
    assert word_error_rate("And so my fellow Americans.", result.text) <= 0.2, result.text


def niced_threads() -> set[int]:
    """The ids of this process's threads running at the background CPU priority or lower."""
    from pathlib import Path

    niced = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        if int(fields[16]) >= BACKGROUND:  # field 19 of stat: nice (counted after the name)
            niced.add(int(task.name))
    return niced


class TestTheUploadsLane:
    """On a CPU, chunks of uploaded files run on a copy of the model of their own whose
    threads run at a low CPU priority, so they take mostly the CPU time live streams
    leave; live work never runs there, and their failures are not the live model's."""

    async def test_a_file_chunk_is_decoded_by_niced_threads_of_a_copy_and_live_work_is_not(self, jfk_audio):
        engine = SpeechEngine("tiny.en", cache_size=0, background_workers=1)
        try:
            await engine.ready()
            assert engine.background is not None
            before = niced_threads()
            transcript = await engine.transcribe(unique(jfk_audio), DecodeOptions.file("en", word_timestamps=True))
            assert word_error_rate(JFK_TEXT, transcript.text) == 0.0 and transcript.words
            # The copy was built by a niced thread: its compute thread inherits the nice value.
            assert len(niced_threads() - before) >= 1
            assert engine.background.load.figures().final_busy_seconds > 0
            assert engine.load.figures().final_busy_seconds == 0, "the live workers' load has no upload in it"
            await engine.transcribe(unique(jfk_audio[:48000]), DecodeOptions.final("en", True))
            assert engine.load.figures().final_busy_seconds > 0
        finally:
            engine.close()

    async def test_a_chunk_past_its_time_limit_opens_the_lanes_breaker_not_the_live_one(self, jfk_audio):
        engine = SpeechEngine("tiny.en", cache_size=0, background_workers=1, transcription_timeout=0.001,
                              transcription_failure_threshold=1)
        try:
            await engine.ready()
            with pytest.raises(SttError) as timed_out:
                await engine.transcribe(unique(jfk_audio), DecodeOptions.file("en", word_timestamps=False))
            assert timed_out.value.code == "transcription_timeout"
            assert engine.background_breaker.state is BreakerState.OPEN
            assert engine.transcription_breaker.state is BreakerState.CLOSED
        finally:
            engine.close()

    async def test_without_a_lane_file_chunks_queue_on_the_live_workers(self, jfk_audio):
        engine = SpeechEngine("tiny.en", cache_size=0)
        try:
            await engine.ready()
            assert engine.background is None
            transcript = await engine.transcribe(unique(jfk_audio), DecodeOptions.file("en", word_timestamps=False))
            assert word_error_rate(JFK_TEXT, transcript.text) == 0.0
            assert engine.load.figures().final_busy_seconds > 0
        finally:
            engine.close()
