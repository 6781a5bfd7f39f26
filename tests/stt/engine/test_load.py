"""stt/engine/load.py: what the engine measures of its own load (finals' time from
request to answer, decode time on the final path and on partials) over a sliding
window, fed by the real engine's decodes and read back as LoadFigures."""

import asyncio

import pytest

from stt.engine import DecodeOptions, SpeechEngine
from stt.engine.load import LoadMeter, quantile
from stt.errors import SttError
from tests.stt.engine.helpers import unique


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def measured(jfk_audio):
    """Real decode times of this machine: three finals and three partials of real speech
    decoded one by one by an engine of its own (its own meter, nothing else running on it)."""

    async def decode():
        engine = SpeechEngine("tiny.en", cache_size=0, load_window_seconds=600)
        await engine.ready()
        finals = [await engine.transcribe(unique(jfk_audio[:16000 * s]), DecodeOptions.final("en", True))
                  for s in (3, 5, 8)]
        partials = [await engine.transcribe(unique(jfk_audio[:16000 * s]), DecodeOptions.partial("en"))
                    for s in (2, 3, 4)]
        figures = engine.load.figures()
        engine.close()
        return finals, partials, figures

    return asyncio.run(decode())


class TestTheRealEngineFeedsItsMeter:
    def test_each_final_is_counted_with_its_time_from_request_to_answer(self, measured):
        finals, _, figures = measured
        assert figures.finals == 3, "partials are not finals"
        slowest = max(t.queue_seconds + t.inference_seconds for t in finals)
        assert figures.final_p95_seconds == pytest.approx(slowest, abs=0.1), "nearest rank of three: the slowest"
        assert figures.final_p50_seconds <= figures.final_p95_seconds

    def test_decode_time_is_counted_on_the_final_path_and_on_partials_apart(self, measured):
        finals, partials, figures = measured
        assert figures.final_busy_seconds == pytest.approx(sum(t.inference_seconds for t in finals), rel=0.01)
        assert figures.partial_busy_seconds == pytest.approx(sum(t.inference_seconds for t in partials), rel=0.01)
        assert 0 < figures.final_load < 1 and 0 < figures.partial_load < 1
        assert figures.workers == 1

    async def test_a_final_answered_from_the_cache_counts_too(self, engine, jfk_audio):
        audio = unique(jfk_audio[:48000])
        options = DecodeOptions.final("en", True)
        before = engine.load.figures().finals
        await engine.transcribe(audio, options)
        again = await engine.transcribe(audio.copy(), options)
        assert again.cached
        assert engine.load.figures().finals == before + 2, "a final answered at once is a final all the same"


class TestTheWindow:
    """Real decode times fed in on a clock the test moves."""

    def test_figures_cover_only_the_last_window(self, measured):
        finals, partials, _ = measured
        clock = Clock()
        meter = LoadMeter(workers=1, window_seconds=30, clock=clock)
        for transcript in finals:
            meter.record_batch(True, transcript.inference_seconds)
            meter.record_final(transcript.queue_seconds + transcript.inference_seconds)
        clock.now += 20
        meter.record_batch(False, partials[0].inference_seconds)
        figures = meter.figures()
        assert figures.finals == 3 and figures.span_seconds == pytest.approx(20)
        clock.now += 15  # the finals are 35 s old now, the partial 15 s
        figures = meter.figures()
        assert figures.finals == 0 and figures.final_p95_seconds is None
        assert figures.final_busy_seconds == 0
        assert figures.partial_busy_seconds == pytest.approx(partials[0].inference_seconds)
        assert figures.span_seconds == 30

    def test_a_batch_that_began_before_the_window_counts_only_its_part_inside(self):
        clock = Clock()
        meter = LoadMeter(workers=2, window_seconds=10, clock=clock)
        clock.now += 60
        meter.record_batch(True, 4.0)  # busy from now-4 to now
        clock.now += 8  # the window starts 2 s before the batch ended
        figures = meter.figures()
        assert figures.final_busy_seconds == pytest.approx(2.0)
        assert figures.final_load == pytest.approx(2.0 / (10 * 2)), "per worker"

    def test_load_is_decode_seconds_per_wall_second_per_worker(self, measured):
        finals, _, _ = measured
        clock = Clock()
        meter = LoadMeter(workers=1, window_seconds=30, clock=clock)
        clock.now += 10
        for transcript in finals:
            meter.record_batch(True, transcript.inference_seconds)
        busy = sum(t.inference_seconds for t in finals)
        assert meter.figures().final_load == pytest.approx(busy / 10)
        assert meter.figures().as_dict()["final_load"] == pytest.approx(busy / 10, abs=1e-4)


def test_quantile_is_the_nearest_rank():
    assert quantile([], 0.95) is None
    assert quantile([3.0], 0.95) == 3.0
    assert quantile([float(i) for i in range(1, 21)], 0.95) == 19.0
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 3.0


async def test_a_final_that_timed_out_counts_with_the_time_it_was_given(jfk_audio):
    engine = SpeechEngine("tiny.en", cache_size=0, transcription_timeout=0.001)
    await engine.ready()
    try:
        with pytest.raises(SttError):
            await engine.transcribe(unique(jfk_audio), DecodeOptions.final("en", True))
        figures = engine.load.figures()
        assert figures.finals == 1 and figures.final_p95_seconds >= 0.001, "a final that never came is late"
    finally:
        engine.close()
