"""The circuit breaker: closed -> open -> half-open -> closed."""

from stt.breaker import BreakerState, CircuitBreaker


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
