"""The registry behind /stats: connection limits, states and latency figures."""

from monitoring.registry import SessionRegistry, percentile


class Fake:
    def __init__(self, connection_id: str, state: str = "active", utterance: str | None = None) -> None:
        self.connection_id = connection_id
        self.session_id = connection_id
        self.state = state
        self.current_utterance_id = utterance

    def stats_entry(self) -> dict:
        return {"state": self.state}


def test_registration_stops_at_the_limit_and_counts_rejections():
    registry = SessionRegistry()
    assert registry.try_register(Fake("a"), limit=2) and registry.try_register(Fake("b"), limit=2)
    assert not registry.try_register(Fake("c"), limit=2)
    assert (registry.active_connections, registry.total_connections, registry.rejected_connections) == (2, 2, 1)


def test_snapshot_counts_connections_by_state_and_active_utterances():
    registry = SessionRegistry()
    for fake in (Fake("a", "buffering", "u1"), Fake("b", "processing", "u2"), Fake("c")):
        registry.try_register(fake, limit=10)
    snapshot = registry.snapshot()
    assert snapshot["connections_by_state"] == {"connecting": 0, "active": 1, "processing": 1, "buffering": 1,
                                                "disconnecting": 0, "error": 0}
    assert snapshot["performance_metrics"]["active_utterances"] == 2


def test_latency_figures_are_in_milliseconds():
    registry = SessionRegistry()
    for seconds in (0.1, 0.2, 0.3, 0.4):
        registry.record_final(seconds)
    metrics = registry.snapshot()["performance_metrics"]
    assert metrics["avg_final_latency_ms"] == 250.0
    assert metrics["p95_final_latency_ms"] == 400.0
    assert metrics["avg_partial_latency_ms"] is None
    assert metrics["total_utterances_processed"] == 4


def test_percentile_picks_the_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([3, 1, 2], 0.5) == 2
    assert percentile(range(101), 0.95) == 95
