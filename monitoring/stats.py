"""One session's figures: its entry in /stats and the summaries of its end.

Computed from the counters of a session's stream (stt.streaming.StreamStats), read by
attribute: monitoring imports nothing from stt, stt hands its figures in.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence


class StreamCounters(Protocol):
    frames: int
    samples_received: int
    samples_transcribed: int
    finals: int
    failed_finals: int
    partials: int
    speech_onsets: int
    processing_seconds: float
    partial_latencies: Sequence[float]
    final_latencies: Sequence[float]


def session_summary(counters: StreamCounters | None, *, reason: str | None, duration_s: float,
                    errors: int, sample_rate: int) -> dict[str, Any]:
    """What session_ended reports (and the history keeps) of a session."""
    def seconds(samples: int) -> float:
        return round(samples / sample_rate, 3)

    c = counters
    return {
        "reason": reason,
        "duration_s": round(duration_s, 3),
        "audio_received_s": seconds(c.samples_received) if c else 0.0,
        "audio_transcribed_s": seconds(c.samples_transcribed) if c else 0.0,
        "utterances": c.finals + c.failed_finals if c else 0,
        "finals": c.finals if c else 0,
        "failed_finals": c.failed_finals if c else 0,
        "partials": c.partials if c else 0,
        "speech_onsets": c.speech_onsets if c else 0,
        "audio_frames": c.frames if c else 0,
        "errors": errors,
    }


def _average(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def stats_entry(counters: StreamCounters | None, *, labels: dict[str, Any], state: str, errors: int,
                current_utterance_id: str | None, partials_enabled: bool, sample_rate: int) -> dict[str, Any]:
    """A session's entry in /stats processing_stats (names from the design document);
    `labels` say whose it is (the server's connection id, the client's session id)."""
    if counters is None:
        return {**labels, "state": state, "session_started": False}
    partial = list(counters.partial_latencies)
    final = list(counters.final_latencies)
    received_s = counters.samples_received / sample_rate
    return {
        **labels,
        "state": state,
        "total_chunks": counters.frames,
        "partial_transcriptions": counters.partials,
        "final_transcriptions": counters.finals,
        "total_processing_time": round(counters.processing_seconds, 3),
        "average_partial_latency": _average(partial),
        "average_final_latency": _average(final),
        "current_utterance_id": current_utterance_id,
        "partial_processing_enabled": partials_enabled,
        "real_time_factor": round(counters.processing_seconds / received_s, 3) if received_s else None,
        "partial_response_time": round(partial[-1] * 1000) if partial else None,
        "final_response_time": round(final[-1] * 1000) if final else None,
        "audio_received_s": round(received_s, 3),
        "errors": errors,
    }


def latency_summary(counters: StreamCounters | None) -> dict[str, Any]:
    """Count, mean, median and 95th percentile of a session's partial and final latencies (ms)."""
    summary: dict[str, Any] = {}
    for name, values in (("partial", counters.partial_latencies if counters else []),
                         ("final", counters.final_latencies if counters else [])):
        ordered = sorted(values)
        if ordered:
            summary[name] = {
                "count": len(ordered),
                "avg_ms": round(sum(ordered) / len(ordered) * 1000, 1),
                "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
                "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
            }
    return summary
