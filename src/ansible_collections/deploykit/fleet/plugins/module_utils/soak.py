"""The canary judged on live traffic (deploykit deploy --canary-soak; the module
deploykit.fleet.soak, on a balancer). Standard library only.

Once the canary clone is back in service on the new release, it serves its share of the real
traffic for the soak. Its figures over the soak, from HAProxy's per-server statistics (`show
stat`), are compared with those of the clones still on the old release over the same seconds:

- the 5xx rate: answers 500-599 (hrsp_5xx) and answers that never completed (eresp), over the
  HTTP requests (req_tot); the difference of the counters between the start and now, so only the
  soak's requests count;
- the response time: HAProxy's rtime, the average time to the first byte of the answer over the
  server's last 1024 requests, weighted by each clone's requests for the old release's figure.
  HAProxy keeps no windowed figure: a soak with fewer than 1024 canary requests still averages in
  some of the old release's, so this rule catches a slow canary only once it has served enough.

The canary fails when its 5xx rate is more than ``max_error_increase`` percentage points above the
old release's, or its response time more than ``max_response_ratio`` times the old release's (and
at least RESPONSE_FLOOR_MS more: a few milliseconds of noise are not a regression). A canary with
fewer than ``min_requests`` requests over the soak is not judged (the result says so). The 5xx
rate is checked every second, so a canary that fails hard is returned at once, not after the
whole soak; the response time at its end.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ansible_collections.deploykit.fleet.plugins.module_utils.haproxy import as_int, stat_rows

#: A response time this much over the old release's is noise, whatever the ratio.
RESPONSE_FLOOR_MS = 20
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Counters:
    requests: int
    errors: int
    rtime_ms: int


@dataclass(frozen=True)
class Figures:
    """One side's figures over the soak."""

    servers: list[str]
    requests: int
    errors: int
    #: Percent of the requests; None without requests.
    error_rate: float | None
    rtime_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Limits:
    max_error_increase: float = 2.0
    max_response_ratio: float = 3.0
    min_requests: int = 20


def read_counters(socket: str, backend: str) -> dict[str, Counters]:
    return {
        row["svname"]: Counters(
            requests=as_int(row.get("req_tot")),
            errors=as_int(row.get("hrsp_5xx")) + as_int(row.get("eresp")),
            rtime_ms=as_int(row.get("rtime")),
        )
        for row in stat_rows(socket)
        if row["pxname"] == backend
    }


def figures(start: dict[str, Counters], end: dict[str, Counters], servers: list[str]) -> Figures:
    requests = errors = 0
    weighted = 0.0
    for server in servers:
        if server not in end:
            continue
        before = start.get(server, Counters(0, 0, 0))
        # A counter that went back (HAProxy restarted) counts from zero.
        served = end[server].requests - before.requests
        failed = end[server].errors - before.errors
        served, failed = (
            (served, failed) if served >= 0 else (end[server].requests, end[server].errors)
        )
        requests += served
        errors += max(failed, 0)
        weighted += end[server].rtime_ms * served
    return Figures(
        servers=sorted(s for s in servers if s in end),
        requests=requests,
        errors=errors,
        error_rate=round(100.0 * errors / requests, 2) if requests else None,
        rtime_ms=round(weighted / requests, 1) if requests else None,
    )


def error_verdict(canary: Figures, old: Figures, limits: Limits) -> str | None:
    """Why the canary's 5xx rate fails it, or None."""
    if canary.requests < limits.min_requests or canary.error_rate is None:
        return None
    old_rate = old.error_rate or 0.0
    if canary.error_rate - old_rate > limits.max_error_increase:
        return (
            f"5xx on {canary.error_rate:g}% of its {canary.requests} requests, against "
            f"{_old(old, f'{old_rate:g}%')} (at most {limits.max_error_increase:g} points more)"
        )
    return None


def response_verdict(canary: Figures, old: Figures, limits: Limits) -> str | None:
    """Why the canary's response time fails it, or None."""
    if canary.requests < limits.min_requests or canary.rtime_ms is None or old.rtime_ms is None:
        return None
    bound = max(old.rtime_ms * limits.max_response_ratio, old.rtime_ms + RESPONSE_FLOOR_MS)
    if canary.rtime_ms > bound:
        against = _old(old, f"{old.rtime_ms:g} ms")
        return (
            f"a response time of {canary.rtime_ms:g} ms, against {against} (at most "
            f"{limits.max_response_ratio:g} times as long)"
        )
    return None


def _old(old: Figures, figure: str) -> str:
    if not old.requests:
        return f"{figure} (no clone on the old release to compare with)"
    return f"{figure} on the old release ({old.requests} requests to {', '.join(old.servers)})"


def soak(
    socket: str,
    backend: str,
    canary: str,
    others: list[str],
    *,
    duration: float,
    limits: Limits,
    clock: Any = time,
) -> dict[str, Any]:
    """Watch the canary for ``duration`` seconds (wall clock) of live traffic. The report:
    {seconds, canary, old (each Figures), verdict ("passed", "failed", "not judged"), reason}."""
    started = clock.monotonic()
    deadline = started + duration
    start = read_counters(socket, backend)
    if canary not in start:
        raise LookupError(f"{backend}/{canary}: no such server")
    others = [s for s in others if s != canary]
    reason = None
    while True:
        clock.sleep(max(0.0, min(POLL_SECONDS, deadline - clock.monotonic())))
        end = read_counters(socket, backend)
        mine, old = figures(start, end, [canary]), figures(start, end, others)
        reason = error_verdict(mine, old, limits)
        if reason or clock.monotonic() >= deadline:
            break
    reason = reason or response_verdict(mine, old, limits)
    verdict = "failed" if reason else "passed"
    if not reason and mine.requests < limits.min_requests:
        verdict = "not judged"
        reason = f"{mine.requests} requests reached the canary, fewer than {limits.min_requests}"
    return {
        "seconds": round(clock.monotonic() - started, 2),
        "canary": mine.to_dict(),
        "old": old.to_dict(),
        "verdict": verdict,
        "reason": reason,
    }
