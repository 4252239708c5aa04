"""``python -m deploykit ARGS`` in a process of its own per command, without importing the command
line each time.

A test that runs the command line dozens of times (test_bad_input_catalogue.py: about 70) spent
most of each run importing ``deploykit.cli`` and what it imports (0.4-0.7 s of a 0.6-0.9 s run).
Here one server process imports it once, with no thread started, and forks a child per command:
each command still runs in a process of its own, from the repository root, with its own exit
code, stdout and stderr (files the caller names), as ``python -m deploykit`` runs it
(``deploykit/__main__.py`` through :mod:`runpy`), and nothing one command does reaches the next.

Run as a script, this file is the server: one JSON request per line on stdin (``argv``, ``stdout``,
``stderr``: the files the command writes to), answered on stdout by ``{"pid": N}`` when the command
starts and ``{"returncode": N}`` when it ends. :class:`ForkedCli` is the client.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any


def _exit_code(error: SystemExit) -> int:
    """The exit code Python gives ``raise SystemExit(code)`` (None: 0; a text: printed, 1)."""
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)
    return 1


def _run_command(argv: list[str], stdout: str, stderr: str) -> int:
    """In the forked child: the command, with fds 0, 1 and 2 its own. Returns its exit code."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["deploykit", *argv]
    try:
        runpy.run_module("deploykit", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as error:
        code = _exit_code(error)
    except BaseException:  # what Python prints for an uncaught exception, and its exit code
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve() -> None:
    """The server: import the command line once, then fork a child per request."""
    import deploykit.cli  # noqa: F401, PLC0415 - the import every command shares

    requests = sys.stdin.buffer
    answers = os.dup(1)

    def answer(message: dict[str, Any]) -> None:
        os.write(answers, (json.dumps(message) + "\n").encode())

    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(answers)
            code = 1
            try:
                code = _run_command(request["argv"], request["stdout"], request["stderr"])
            finally:
                os._exit(code)
        answer({"pid": pid})
        _, status = os.waitpid(pid, 0)
        answer({"returncode": os.waitstatus_to_exitcode(status)})


class ForkedCli:
    """The client: starts the server (with ``env``, in ``cwd``) and runs commands through it."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self._server = subprocess.Popen(
            [sys.executable, __file__],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def _read(self, deadline: float | None) -> dict[str, Any]:
        assert self._server.stdout is not None
        stream: IO[bytes] = self._server.stdout
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([stream], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = stream.readline()
        if not line:
            raise RuntimeError(f"the command server ended (exit {self._server.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, argv: list[str], out: Path, err: Path, timeout: float) -> int:
        """Run one command; its exit code (SIGKILLed after ``timeout`` seconds: TimeoutError)."""
        assert self._server.stdin is not None
        request = {"argv": argv, "stdout": str(out), "stderr": str(err)}
        self._server.stdin.write((json.dumps(request) + "\n").encode())
        self._server.stdin.flush()
        pid = self._read(None)["pid"]
        deadline = time.monotonic() + timeout
        try:
            code: int = self._read(deadline)["returncode"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._read(None)
            raise TimeoutError(
                f"deploykit {' '.join(argv)}: still running after {timeout:.0f} s"
            ) from None
        return code

    def close(self) -> None:
        if self._server.stdin is not None:
            self._server.stdin.close()
        self._server.wait(timeout=30)


if __name__ == "__main__":
    serve()
