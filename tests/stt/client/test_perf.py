"""The performance tester as the design document uses it, against a real server process."""

from __future__ import annotations

import numpy as np
import pytest

from stt.client import STTPerformanceTester
from stt.client.perf import format_results

pytestmark = pytest.mark.realtime


async def test_run_performance_test_reports_latency_and_counts_with_synthesized_speech(stt_server):
    tester = STTPerformanceTester(stt_server.ws, api_key=stt_server.keys["backend"], clients=3)
    await tester.connect()
    assert tester.server is not None and tester.server.model.name
    results = await tester.run_performance_test(duration_seconds=10)
    assert results["sessions_failed"] == 0 and results["clients"] == 3
    assert results["audio_seconds_sent"] >= 3 * 10
    assert results["partial_count"] > 0 and results["final_count"] >= 3
    for key in ("avg_partial_latency_ms", "p95_partial_latency_ms", "avg_final_latency_ms", "avg_final_processing_ms"):
        assert results[key] is not None and results[key] >= 0, key
    assert results["p95_partial_latency_ms"] >= results["p50_partial_latency_ms"]
    assert results["max_send_lag_seconds"] < 1.0, "the clients kept real-time pace"
    report = format_results(results)
    assert "Partial Latency:" in report and "Final Latency:" in report and "Total Messages:" in report


def test_each_simulated_client_streams_audio_of_its_own(jfk_audio):
    """The server's result cache answers identical audio at once: clients sending the same
    bytes would look cheap. Every client's audio differs, and fills the duration."""
    from stt.client.perf import client_audio

    loop = jfk_audio[:16000 * 3]
    audios = [np.concatenate(list(client_audio(index, loop, duration_seconds=7.5))) for index in range(50)]
    assert all(audio.size == 16000 * 7.5 for audio in audios)
    assert len({audio.tobytes() for audio in audios}) == 50
    assert np.allclose(audios[0][:loop.size], loop, atol=1e-3), "the same speech, at a gain of its own"
