"""The frame of the lab benches' command line (bench/rolling_deploy.py, bench/clone_loss.py):
people's output beside one JSON summary, and how a run that cannot start ends. One home, so that
CI (tests/e2e/test_benches.py), which reads the JSON on stdout and the report on stderr, reads
every bench alike.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from deploykit.errors import DeploykitError

EXIT_RAN = 0
#: The lab is not there or not ready for the bench (the message says what to do).
EXIT_NOT_READY = 2
#: Ctrl-C, as a shell reports a SIGINT.
EXIT_INTERRUPTED = 130

#: Prints the JSON summary in --json mode, nothing otherwise.
Emit = Callable[[dict[str, Any]], None]


class NotRunnable(Exception):
    """The bench cannot run; ``exit_code`` says why (not ready, or a step it needs failed)."""

    def __init__(self, message: str, exit_code: int = EXIT_NOT_READY) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Out:
    """People's output: to stdout, or to stderr when stdout carries the JSON."""

    def __init__(self, json_mode: bool) -> None:
        self.stream = sys.stderr if json_mode else sys.stdout

    def __call__(self, line: str = "") -> None:
        print(line, file=self.stream, flush=True)


def machine_yardstick() -> dict[str, float]:
    """This machine's speed when the bench starts: a fixed pure-Python workload (the best of
    three runs, in seconds) and the load average of the last minute. The same code measured on
    this workplace's machines on different days differed by half (2026-12-06: every rollout
    step 1.45x the day before's, the workload 0.26 s); a figure is compared with another beside
    the yardstick each was measured with."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        sum(i * i for i in range(2_000_000))
        best = min(best, time.perf_counter() - started)
    return {"workload_seconds": round(best, 3), "load_1min": round(os.getloadavg()[0], 2)}


def describe_yardstick(yardstick: dict[str, float]) -> str:
    return (
        f"machine: the yardstick workload in {yardstick['workload_seconds']:.3f} s (best of 3), "
        f"load average {yardstick['load_1min']:.2f}"
    )


def run_bench(
    name: str,
    json_mode: bool,
    run: Callable[[Out, Emit], int],
    *,
    cannot_run_exit: int | None = None,
) -> int:
    """``run(say, emit)``'s exit code. A NotRunnable or a DeploykitError ends the bench with
    "NAME: cannot run: ..." for people and {"error", "exit_code"} as the JSON; the exit code is
    ``cannot_run_exit``, or the error's own when that is None. Ctrl-C ends it with 130. The
    machine's yardstick (:func:`machine_yardstick`) heads the report and is in the JSON."""
    say = Out(json_mode)
    yardstick = machine_yardstick()
    say(describe_yardstick(yardstick))

    def emit(data: dict[str, Any]) -> None:
        if json_mode:
            print(json.dumps({**data, "machine": yardstick}, indent=2), flush=True)

    try:
        return run(say, emit)
    except (NotRunnable, DeploykitError) as error:
        code = error.exit_code if cannot_run_exit is None else cannot_run_exit
        say(f"\n{name}: cannot run: {error}")
        emit({"error": str(error), "exit_code": code})
        return code
    except KeyboardInterrupt:
        say("\ninterrupted")
        return EXIT_INTERRUPTED
