"""The dependency checks behind /healthz, cheap enough for a balancer that asks twice a second.

Every balancer checks every clone every 500 ms, so each result is kept for a short while (`ttl`)
and shared by the requests that arrive meanwhile; one request at a time refreshes the stale ones,
all in parallel and within `deadline`, so that /healthz answers in bounded time even when a
dependency hangs (a probe still running at the deadline is reported as a timeout, and finishes in
the background on its own socket timeout).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass

log = logging.getLogger(__name__)

OK = "ok"


@dataclass(frozen=True)
class Check:
    name: str
    #: Returns if the dependency answers; raises (anything) if not.
    probe: Callable[[], object]
    #: A failing critical check makes the clone unhealthy (503); others are only reported.
    critical: bool = True
    #: How long (s) a result is reused.
    ttl: float = 1.0


class HealthChecker:
    def __init__(self, checks: list[Check], *, deadline: float = 1.5) -> None:
        self.checks = checks
        self.deadline = deadline
        self._lock = threading.Lock()
        self._results: dict[str, tuple[float, str]] = {}  # name -> (valid until, result)

    def report(self) -> tuple[bool, dict[str, str]]:
        """(healthy, {check name: "ok" or what went wrong})."""
        with self._lock:
            now = time.monotonic()
            stale = [c for c in self.checks if self._results.get(c.name, (0.0, ""))[0] <= now]
            if stale:
                fresh = self._run(stale)
                done = time.monotonic()
                for check in stale:
                    self._results[check.name] = (done + check.ttl, fresh[check.name])
            results = {c.name: self._results[c.name][1] for c in self.checks}
        healthy = all(results[c.name] == OK for c in self.checks if c.critical)
        return healthy, results

    def _run(self, checks: list[Check]) -> dict[str, str]:
        # A new executor per refresh (at most once per ttl): threads made before a fork (gunicorn
        # --preload) would not exist in the child.
        executor = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="healthz")
        try:
            futures = {check.name: executor.submit(check.probe) for check in checks}
            wait_futures(futures.values(), timeout=self.deadline)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        results: dict[str, str] = {}
        for name, future in futures.items():
            if not future.done():
                results[name] = f"timeout: no answer within {self.deadline:g} s"
            elif (exc := future.exception()) is not None:
                results[name] = describe(exc)
            else:
                results[name] = OK
            if results[name] != OK:
                log.warning("healthz: %s: %s", name, results[name])
        return results


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"error: {text[:300]}"
