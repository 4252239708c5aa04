"""The frame of the lab benches' command line (bench/rolling_deploy.py, bench/clone_loss.py):
people's output beside one JSON summary, and how a run that cannot start ends. One home, so that
CI (tests/e2e/test_benches.py), which reads the JSON on stdout and the report on stderr, reads
every bench alike.
"""

from __future__ import annotations

import json
import sys
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


def run_bench(
    name: str,
    json_mode: bool,
    run: Callable[[Out, Emit], int],
    *,
    cannot_run_exit: int | None = None,
) -> int:
    """``run(say, emit)``'s exit code. A NotRunnable or a DeploykitError ends the bench with
    "NAME: cannot run: ..." for people and {"error", "exit_code"} as the JSON; the exit code is
    ``cannot_run_exit``, or the error's own when that is None. Ctrl-C ends it with 130."""
    say = Out(json_mode)

    def emit(data: dict[str, Any]) -> None:
        if json_mode:
            print(json.dumps(data, indent=2), flush=True)

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
