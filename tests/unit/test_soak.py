"""The canary's soak (module_utils/soak.py): the figures over the soak from HAProxy's counters, the
verdicts and their sentences, and the early end of a canary that fails hard. HAProxy's answers
are scripted here; the real one is in tests/e2e/test_rolling_deploys.py."""

from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils import soak as sk

C = sk.Counters
LIMITS = sk.Limits(max_error_increase=2.0, max_response_ratio=3.0, min_requests=20)


def test_figures_are_the_soaks_differences_weighted_by_requests() -> None:
    start = {"app1": C(1000, 5, 9), "app2": C(500, 0, 9), "app3": C(10, 0, 9)}
    end = {"app1": C(1100, 55, 12), "app2": C(600, 1, 10), "app3": C(110, 0, 30)}
    canary = sk.figures(start, end, ["app1"])
    assert (canary.requests, canary.errors, canary.error_rate, canary.rtime_ms) == (100, 50, 50, 12)
    old = sk.figures(start, end, ["app2", "app3", "gone"])
    assert old.servers == ["app2", "app3"]
    assert (old.requests, old.errors, old.error_rate, old.rtime_ms) == (200, 1, 0.5, 20)


def test_a_counter_that_went_back_counts_from_zero() -> None:
    restarted = sk.figures({"app1": C(900, 9, 5)}, {"app1": C(30, 3, 5)}, ["app1"])
    assert (restarted.requests, restarted.errors) == (30, 3)


def fig(requests: int, errors: int, rtime: float | None, servers: tuple[str, ...] = ("x",)) -> Any:
    rate = round(100.0 * errors / requests, 2) if requests else None
    return sk.Figures(list(servers), requests, errors, rate, rtime if requests else None)


def test_the_5xx_rate_fails_the_canary_past_the_limit_only() -> None:
    old = fig(200, 2, 10, ("app2", "app3"))
    assert sk.error_verdict(fig(100, 3, 10), old, LIMITS) is None  # 3% against 1%: +2 points
    reason = sk.error_verdict(fig(100, 50, 10), old, LIMITS)
    assert reason == (
        "5xx on 50% of its 100 requests, against 1% on the old release (200 requests to app2, "
        "app3) (at most 2 points more)"
    )
    # Too few requests to judge.
    assert sk.error_verdict(fig(19, 19, 10), old, LIMITS) is None


def test_the_response_time_fails_the_canary_past_the_ratio_and_the_floor() -> None:
    old = fig(200, 0, 10)
    assert sk.response_verdict(fig(100, 0, 29), old, LIMITS) is None  # under the 20 ms floor
    assert sk.response_verdict(fig(100, 0, 30), old, LIMITS) is None  # exactly 3 times
    reason = sk.response_verdict(fig(100, 0, 31), old, LIMITS)
    assert reason is not None and reason.startswith("a response time of 31 ms, against 10 ms")
    # No old release to compare the response time with: not judged on it.
    assert sk.response_verdict(fig(100, 0, 500), fig(0, 0, None), LIMITS) is None


class Script:
    """HAProxy's counters and a clock, advanced one poll at a time."""

    def __init__(self, readings: list[dict[str, sk.Counters]]) -> None:
        self.readings = readings
        self.now = 0.0
        self.reads = 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def read(self, socket: str, backend: str) -> dict[str, sk.Counters]:
        reading = self.readings[min(self.reads, len(self.readings) - 1)]
        self.reads += 1
        return reading


def run(monkeypatch: pytest.MonkeyPatch, script: Script, duration: float) -> dict[str, Any]:
    monkeypatch.setattr(sk, "read_counters", script.read)
    return sk.soak("/sock", "app", "app1", ["app1", "app2"], duration=duration, limits=LIMITS,
                   clock=script)  # fmt: skip


def test_a_canary_that_fails_hard_ends_the_soak_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    start = {"app1": C(0, 0, 5), "app2": C(0, 0, 5)}
    bad = {"app1": C(40, 40, 5), "app2": C(40, 0, 5)}
    script = Script([start, bad])
    report = run(monkeypatch, script, duration=30)
    assert report["verdict"] == "failed" and report["seconds"] == 1.0, report
    assert report["reason"].startswith("5xx on 100% of its 40 requests, against 0% on the old")


def test_a_good_canary_passes_after_the_whole_soak(monkeypatch: pytest.MonkeyPatch) -> None:
    start = {"app1": C(0, 0, 5), "app2": C(0, 0, 5)}
    good = {"app1": C(100, 0, 6), "app2": C(100, 0, 5)}
    report = run(monkeypatch, Script([start, good]), duration=5.5)
    assert (report["verdict"], report["seconds"], report["reason"]) == ("passed", 5.5, None)
    assert report["canary"]["requests"] == 100 and report["old"]["servers"] == ["app2"]


def test_a_canary_without_traffic_is_not_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    start = {"app1": C(0, 0, 0), "app2": C(0, 0, 0)}
    report = run(monkeypatch, Script([start, {"app1": C(3, 3, 0), "app2": C(3, 0, 0)}]), 2)
    assert report["verdict"] == "not judged"
    assert report["reason"] == "3 requests reached the canary, fewer than 20"
