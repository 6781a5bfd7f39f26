"""StreamingTranscriber without VAD (fixed-length segments, VAD switched mid-stream) and
its work kept off the event loop, on real speech with the real VAD and model."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from stt.evaluation import word_error_rate
from stt.protocol import validate_config
from stt.streaming import FinalReason, SpeechStart, StreamingTranscriber, StreamParams
from stt.vad import SileroVad
from tests.conftest import JFK_TEXT, SAMPLE_RATE, silence
from tests.stt.streaming.support import FIRST, SECOND, Recorder, stream


class TestWithoutVad:
    async def test_audio_is_cut_into_buffer_duration_segments(self, engine, speak):
        audio = np.concatenate([speak(f"{FIRST} {SECOND}"), silence(0.5)])
        transcriber, recorder = await stream(engine, audio, enable_vad=False, buffer_duration=2.0,
                                             enable_partial_transcription=False)
        finals = recorder.finals
        assert recorder.of(SpeechStart) == [], "no voice-activity events without VAD"
        assert len(finals) >= 2
        assert all(f.end_sample - f.start_sample <= 2 * SAMPLE_RATE for f in finals)
        assert finals[0].start_sample == 0 and finals[-1].end_sample == audio.size, "all audio is covered"
        assert word_error_rate(f"{FIRST} {SECOND}", recorder.final_text) <= 0.35

    async def test_switching_vad_on_mid_utterance_keeps_its_audio(self, engine, jfk_audio):
        transcriber, recorder = await stream(engine, jfk_audio[: int(2.5 * SAMPLE_RATE)], close=False,
                                             enable_vad=False, buffer_duration=10.0)
        transcriber.reconfigure(StreamParams.from_config(validate_config({})))
        for start in range(0, SAMPLE_RATE, 1024):
            await transcriber.push_audio(silence(1)[start:start + 1024])
        await transcriber.close(FinalReason.SESSION_END)
        first = recorder.finals[0]
        assert first.start_sample == 0 and first.reason == FinalReason.SILENCE
        assert "fellow americans" in first.transcript.text.lower()

    async def test_switching_vad_off_mid_session_keeps_the_stream_going(self, engine, jfk_audio):
        transcriber, recorder = await stream(engine, jfk_audio[:SAMPLE_RATE * 3], close=False)
        transcriber.reconfigure(StreamParams.from_config(validate_config({"enable_vad": False,
                                                                          "buffer_duration": 10.0})))
        for start in range(3 * SAMPLE_RATE, jfk_audio.size, 1024):
            await transcriber.push_audio(jfk_audio[start:start + 1024])
        await transcriber.close(FinalReason.SESSION_END)
        assert word_error_rate(JFK_TEXT, recorder.final_text) <= 0.2


class TestOffTheEventLoop:
    """The segmenter's work for a frame (VAD above all) runs in a worker thread: the
    event loop, which serves every session of the process, only schedules it."""

    async def test_voice_activity_detection_runs_off_the_event_loop(self, engine, jfk_audio, monkeypatch):
        threads: list[int] = []
        real_process = SileroVad.process

        def process_noting_the_thread(vad: SileroVad, samples: np.ndarray) -> list[float]:
            threads.append(threading.get_ident())
            return real_process(vad, samples)

        monkeypatch.setattr(SileroVad, "process", process_noting_the_thread)
        _, recorder = await stream(engine, np.concatenate([jfk_audio, silence(1)]), frame=16384,
                                   enable_partial_transcription=False)
        assert word_error_rate(JFK_TEXT, recorder.final_text) == 0.0
        assert threads, "the real VAD ran"
        assert threading.get_ident() not in threads, "no frame's VAD ran on the event loop's thread"

    async def test_close_while_a_frame_is_in_flight_finalizes_that_frame_too(self, engine, jfk_audio):
        recorder = Recorder()
        params = StreamParams.from_config(validate_config({"final_chunk_duration": 2.0}))
        transcriber = StreamingTranscriber(params, engine, recorder)
        pushing = asyncio.create_task(transcriber.push_audio(jfk_audio[:3 * SAMPLE_RATE]))
        await asyncio.sleep(0)
        await transcriber.close(FinalReason.SESSION_END)
        await pushing
        assert [f.reason for f in recorder.finals] == [FinalReason.SESSION_END]
        assert "fellow americans" in recorder.final_text.lower()
        assert transcriber.stats.samples_received == 3 * SAMPLE_RATE

    async def test_a_listener_fault_at_speech_start_loses_no_final_of_that_frame(self, engine, jfk_audio):
        class FailingAtOnset(Recorder):
            async def on_speech_start(self, event: SpeechStart) -> None:
                raise RuntimeError("listener fault")

        recorder = FailingAtOnset()
        params = StreamParams.from_config(validate_config({"enable_partial_transcription": False}))
        transcriber = StreamingTranscriber(params, engine, recorder)
        with pytest.raises(RuntimeError, match="listener fault"):
            # One frame holding the first phrase and the silence after it: onset and close.
            await transcriber.push_audio(np.concatenate([jfk_audio[:int(2.5 * SAMPLE_RATE)], silence(1)]))
        await transcriber.close(FinalReason.SESSION_END)
        assert [f.reason for f in recorder.finals] == [FinalReason.SILENCE]
        assert "fellow americans" in recorder.final_text.lower()
