"""deploykit.hooks: real executables in a temporary directory and a real HTTP receiver on
loopback (no host is contacted)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploykit.errors import BadInput
from deploykit.hooks import Hooks, environment

SUMMARY: dict[str, Any] = {
    "event": "deploy",
    "outcome": "succeeded",
    "app": "shop",
    "release": "1.1.0-abc",
    "previous": "1.0.0-def",
    "failure": None,
    "nodes": {
        "app1/app": {"outcome": "switched"},
        "app2/app": {"outcome": "unchanged"},
        "lb1/lb": {"outcome": "switched"},
    },
}


def hook(directory: Path, name: str, script: str, *, executable: bool = True) -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755 if executable else 0o644)
    return path


def test_the_variables_before_and_after() -> None:
    before = environment(SUMMARY, "pre-deploy", Path("/inv/hosts.yml"))
    assert before == {
        "DEPLOYKIT_HOOK": "pre-deploy",
        "DEPLOYKIT_ACTION": "deploy",
        "DEPLOYKIT_APP": "shop",
        "DEPLOYKIT_RELEASE": "1.1.0-abc",
        "DEPLOYKIT_PREVIOUS": "1.0.0-def",
        "DEPLOYKIT_HOSTS": "app1 app2 lb1",
        "DEPLOYKIT_INVENTORY": "/inv/hosts.yml",
    }
    after = environment({**SUMMARY, "failure": "app1: boom"}, "on-failure", Path("/i"))
    assert after["DEPLOYKIT_OUTCOME"] == "succeeded"
    assert after["DEPLOYKIT_CHANGED_HOSTS"] == "app1 lb1"
    assert after["DEPLOYKIT_FAILURE"] == "app1: boom"


def test_a_hook_gets_the_variables_and_the_summary_on_stdin(tmp_path: Path) -> None:
    hook(tmp_path, "post-deploy", 'echo "$DEPLOYKIT_APP $DEPLOYKIT_HOOK"; cat; exit 0')
    hooks = Hooks.load(tmp_path)
    ran = hooks.run("post-deploy", environment(SUMMARY, "post-deploy", tmp_path), "the summary")
    assert ran is not None and ran.ok
    assert ran.output == ["shop post-deploy", "the summary"]


def test_a_missing_hook_does_not_run(tmp_path: Path) -> None:
    hook(tmp_path, "pre-deploy.sample", "exit 1")  # not a hook's name: ignored
    hooks = Hooks.load(tmp_path)
    assert not hooks.has("pre-deploy")
    assert hooks.run("pre-deploy", {}) is None
    assert Hooks().run("pre-deploy", {}) is None


def test_a_failing_hook_says_how_it_ended_and_its_last_line(tmp_path: Path) -> None:
    hook(tmp_path, "pre-deploy", 'echo one; echo "not in the deploy window" >&2; exit 3')
    ran = Hooks.load(tmp_path).run("pre-deploy", {})
    assert ran is not None and not ran.ok and ran.rc == 3
    assert ran.describe(60).startswith("the pre-deploy hook exited 3 after ")
    assert ran.describe(60).endswith(": not in the deploy window")


def test_a_hook_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    hook(tmp_path, "pre-deploy", f"sleep 300 & echo $! > {pid_file}; wait")
    hooks = Hooks.load(tmp_path, timeout=1)
    started = time.monotonic()
    ran = hooks.run("pre-deploy", {})
    assert time.monotonic() - started < 10
    assert ran is not None and ran.rc is None and not ran.ok
    assert "did not end within 1 s (killed)" in ran.describe(hooks.timeout)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while running(child):
        assert time.monotonic() < deadline, f"the hook's child {child} still runs"
        time.sleep(0.1)


def running(pid: int) -> bool:
    """PID runs (a zombie, killed and not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("mode", [0o644, None])
def test_a_hook_that_cannot_run_is_bad_input(tmp_path: Path, mode: int | None) -> None:
    if mode is None:
        (tmp_path / "post-deploy").mkdir()
    else:
        hook(tmp_path, "post-deploy", "exit 0", executable=False)
    with pytest.raises(BadInput, match=r"the post-deploy hook .* is not an executable file"):
        Hooks.load(tmp_path)


def test_a_missing_directory_and_a_bad_url_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such directory"):
        Hooks.load(tmp_path / "nope")
    for url in ("file:///etc/passwd", "ftp://h/x", "hooks.example/SECRET", "http:///SECRET"):
        with pytest.raises(BadInput) as refused:
            Hooks.load(None, notify_url=url)
        assert "SECRET" not in str(refused.value) and "passwd" not in str(refused.value)


class Receiver:
    """A real HTTP receiver on loopback: records each POST's body and answers ``status``."""

    def __init__(self, status: int) -> None:
        received: list[Any] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append((self.headers["Content-Type"], json.loads(self.rfile.read(length))))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/SECRET-TOKEN"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    answer = Receiver(getattr(request, "param", 204))
    yield answer
    answer.close()


def test_the_summary_is_posted_as_json(receiver: Receiver) -> None:
    assert Hooks.load(None, notify_url=receiver.url).notify(SUMMARY) is None
    assert receiver.received == [("application/json", SUMMARY)]


@pytest.mark.parametrize("receiver", [500], indirect=True)
def test_a_receiver_that_refuses_is_reported_without_the_url(receiver: Receiver) -> None:
    failure = Hooks.load(None, notify_url=receiver.url).notify(SUMMARY)
    assert failure == "the receiver answered 500"


def test_a_receiver_that_never_answers_costs_the_timeout_only() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts the connection (backlog), never answers
        port = silent.getsockname()[1]
        hooks = Hooks(notify_url=f"http://127.0.0.1:{port}/SECRET", notify_timeout=1)
        started = time.monotonic()
        failure = hooks.notify(SUMMARY)
        assert time.monotonic() - started < 5
    assert failure == "no answer within 1 s"


def test_a_receiver_that_is_not_there() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: refused
        failure = Hooks(notify_url=f"http://127.0.0.1:{port}/SECRET").notify(SUMMARY)
    assert failure is not None and failure.startswith("could not reach the receiver")
    assert "SECRET" not in failure and str(port) not in failure
