"""A session's figures from its stream's counters: /stats entries and end summaries."""

from __future__ import annotations

from types import SimpleNamespace

from monitoring.stats import latency_summary, session_summary, stats_entry


def counters(**overrides):
    values = dict(frames=10, samples_received=32000, samples_transcribed=16000, finals=2, failed_finals=1,
                  partials=5, speech_onsets=3, processing_seconds=0.5,
                  partial_latencies=[0.1, 0.3], final_latencies=[0.2])
    return SimpleNamespace(**{**values, **overrides})


def test_a_summary_counts_audio_in_seconds_and_utterances_with_the_failed_ones():
    summary = session_summary(counters(), reason="end_session", duration_s=3.21234, errors=1, sample_rate=16000)
    assert summary == {"reason": "end_session", "duration_s": 3.212, "audio_received_s": 2.0,
                       "audio_transcribed_s": 1.0, "utterances": 3, "finals": 2, "failed_finals": 1,
                       "partials": 5, "speech_onsets": 3, "audio_frames": 10, "errors": 1}


def test_a_session_never_started_sums_up_to_zeros():
    summary = session_summary(None, reason="client_disconnected", duration_s=0.0, errors=0, sample_rate=16000)
    assert summary["audio_received_s"] == 0.0 and summary["utterances"] == 0


def test_a_stats_entry_carries_its_labels_and_the_design_documents_figures():
    labels = {"connection_id": "c-1", "session_id": "client-label"}
    entry = stats_entry(counters(), labels=labels, state="buffering", errors=0, current_utterance_id="u-1",
                        partials_enabled=True, sample_rate=16000)
    assert entry["connection_id"] == "c-1" and entry["session_id"] == "client-label"
    assert entry["average_partial_latency"] == 0.2 and entry["partial_response_time"] == 300
    assert entry["real_time_factor"] == 0.25 and entry["audio_received_s"] == 2.0
    idle = stats_entry(None, labels=labels, state="active", errors=0, current_utterance_id=None,
                       partials_enabled=False, sample_rate=16000)
    assert idle == {**labels, "state": "active", "session_started": False}


def test_latency_summary_in_milliseconds():
    summary = latency_summary(counters(final_latencies=[0.1 * i for i in range(1, 21)]))
    assert summary["final"] == {"count": 20, "avg_ms": 1050.0, "p50_ms": 1100.0, "p95_ms": 2000.0}
    assert summary["partial"]["count"] == 2
    assert latency_summary(None) == {}
