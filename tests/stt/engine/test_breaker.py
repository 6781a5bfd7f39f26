"""The circuit breaker: closed -> open -> half-open -> closed."""

from stt.engine.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_the_threshold_of_consecutive_failures():
    breaker = CircuitBreaker("t", failure_threshold=3, reset_seconds=10, clock=Clock())
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_a_success_resets_the_count():
    breaker = CircuitBreaker("t", failure_threshold=2, reset_seconds=10, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_half_open_after_the_timeout_lets_one_probe_through():
    clock = Clock()
    breaker = CircuitBreaker("t", failure_threshold=1, reset_seconds=10, clock=clock)
    breaker.record_failure()
    clock.now = 4.0
    assert breaker.retry_after() == 6.0
    clock.now = 10.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() is True
    assert breaker.allow() is False, "only one probe at a time"


def test_the_probe_decides_closed_or_open_again():
    clock = Clock()
    breaker = CircuitBreaker("t", failure_threshold=1, reset_seconds=10, clock=clock)
    breaker.record_failure()
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and breaker.retry_after() == 10.0
    clock.now = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_a_late_success_of_a_call_admitted_before_opening_does_not_close_it():
    breaker = CircuitBreaker("t", failure_threshold=1, reset_seconds=10, clock=Clock())
    breaker.record_failure()
    breaker.record_success()  # stale news from before the breaker opened
    assert breaker.state is BreakerState.OPEN


def test_failures_while_open_do_not_extend_the_open_time():
    clock = Clock()
    breaker = CircuitBreaker("t", failure_threshold=1, reset_seconds=10, clock=clock)
    breaker.record_failure()
    clock.now = 9.0
    breaker.record_failure()
    clock.now = 10.0
    assert breaker.state is BreakerState.HALF_OPEN


def test_admission_says_who_is_the_half_open_probe():
    clock = Clock()
    transitions: list[tuple[str, str]] = []
    breaker = CircuitBreaker("t", failure_threshold=1, reset_seconds=10, clock=clock,
                             on_change=lambda name, state: transitions.append((name, state)))
    assert breaker.admit() == "call"
    breaker.record_failure()
    assert breaker.admit() is None
    clock.now = 10.0
    assert breaker.admit() == "probe" and breaker.admit() is None, "one probe at a time"
    breaker.release_probe()  # the probe ended with no verdict
    assert breaker.admit() == "probe"
    breaker.record_success()
    assert transitions == [("t", "open"), ("t", "half_open"), ("t", "closed")]
