"""The /healthz checker: cached, bounded in time, critical and non-critical checks."""

from __future__ import annotations

import threading
import time

from shop.health import OK, Check, HealthChecker


class Probe:
    def __init__(self, *, fail: bool = False, delay: float = 0.0) -> None:
        self.calls = 0
        self.fail = fail
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.fail:
            raise ConnectionError("refused")


def test_results_are_cached_for_their_ttl() -> None:
    fast, slow = Probe(), Probe()
    checker = HealthChecker([Check("a", fast, ttl=0.3), Check("b", slow, ttl=60)])
    for _ in range(20):
        assert checker.report() == (True, {"a": OK, "b": OK})
    assert (fast.calls, slow.calls) == (1, 1)
    time.sleep(0.35)
    checker.report()
    assert (fast.calls, slow.calls) == (2, 1)


def test_critical_failure_is_unhealthy_other_failures_are_reported() -> None:
    checker = HealthChecker(
        [Check("db", Probe()), Check("queue", Probe(fail=True), critical=False)]
    )
    healthy, checks = checker.report()
    assert healthy
    assert checks == {"db": OK, "queue": "error: refused"}
    checker = HealthChecker([Check("db", Probe(fail=True))])
    assert checker.report() == (False, {"db": "error: refused"})


def test_a_hanging_dependency_costs_at_most_the_deadline() -> None:
    checker = HealthChecker([Check("hangs", Probe(delay=3)), Check("fine", Probe())], deadline=0.3)
    started = time.monotonic()
    healthy, checks = checker.report()
    assert time.monotonic() - started < 1
    assert not healthy
    assert checks["hangs"].startswith("timeout")
    assert checks["fine"] == OK


def test_concurrent_requests_share_one_refresh() -> None:
    probe = Probe(delay=0.2)
    checker = HealthChecker([Check("a", probe, ttl=5)])
    threads = [threading.Thread(target=checker.report) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert probe.calls == 1
