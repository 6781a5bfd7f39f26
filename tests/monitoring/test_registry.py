"""The registry behind /stats: connection limits, states and latency figures."""

from monitoring.registry import SessionRegistry, percentile


class Principal:
    def __init__(self, key_id: int | None) -> None:
        self.key_id = key_id


class Fake:
    def __init__(self, connection_id: str, state: str = "active", utterance: str | None = None,
                 key_id: int | None = None) -> None:
        self.principal = Principal(key_id)
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


def test_a_connection_still_in_line_counts_against_those_behind_it():
    """Admission awaits the runtime values, so a later connection may reach its limit
    check first: the earlier one, still in line, holds its place."""
    registry = SessionRegistry()
    first, second = Fake("first"), Fake("second")
    registry.arrive(first)
    registry.arrive(second)
    assert not registry.try_register(second, limit=1), "first is ahead of it"
    registry.leave_line(second)
    assert registry.try_register(first, limit=1), "nobody is ahead of first"


def test_a_key_counts_its_sessions_live_and_ahead_in_line_but_not_behind():
    registry = SessionRegistry()
    first, second, other_key = Fake("first", key_id=7), Fake("second", key_id=7), Fake("x", key_id=8)
    for fake in (other_key, first, second):
        registry.arrive(fake)
    assert registry.sessions_of_key(7, counting_ahead_of=second) == 1
    assert registry.sessions_of_key(7, counting_ahead_of=first) == 0, "second is behind it"
    registry.leave_line(first)
    registry.try_register(first, limit=10)
    assert registry.sessions_of_key(7, counting_ahead_of=second) == 1, "now live, no longer in line"
    assert registry.sessions_of_key(7) == 1


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


def test_a_keys_snapshot_lists_only_its_sessions_and_says_so():
    registry = SessionRegistry()
    for fake in (Fake("mine", "buffering", "u1", key_id=7), Fake("theirs", "processing", "u2", key_id=8),
                 Fake("anonymous")):
        registry.try_register(fake, limit=10)
    own = registry.snapshot(of_key=7)
    assert list(own["processing_stats"]) == ["mine"] and own["processing_stats_scope"] == "api_key"
    assert own["active_connections"] == 3, "counts stay the process's (public on / and /ready)"
    everything = registry.snapshot()
    assert set(everything["processing_stats"]) == {"mine", "theirs", "anonymous"}
    assert everything["processing_stats_scope"] == "process"
