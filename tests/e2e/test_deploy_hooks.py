"""Hooks and the notifier around a real deploy on the lab (the shop, deployed by `deploykit up`):
a pre-deploy hook that fails refuses the deploy before anything changes, and the history says so;
one that passes lets it go on, and post-deploy gets the outcome, the variables and the summary,
which a real HTTP receiver on the controller's loopback gets too. The deploys are of the live
release (nothing to switch), so they leave the lab as it was.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from deploykit import lab
from deploykit.release import artifact_filename

pytestmark = pytest.mark.e2e

APP = "shop"


def deploykit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no JSON on stdout; stderr:\n{proc.stderr[-3000:]}"
    return lines[-1]


@pytest.fixture
def live_artifact(shop: str) -> tuple[str, Path]:
    del shop
    status = last_json(deploykit("status", "--json"))
    live = status["live"]
    assert live and status["drift"] is False, status
    artifact = ROOT / ".cache" / "artifacts" / artifact_filename(APP, live)
    assert artifact.is_file(), f"the live release's artifact is not in {artifact.parent}"
    return live, artifact


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/notify/TOKEN-NEVER-PRINTED", received
    server.shutdown()
    server.server_close()


def write_hooks(directory: Path, *, refuse: bool) -> Path:
    directory.mkdir()
    pre = directory / "pre-deploy"
    pre.write_text(
        "#!/bin/sh\nenv | grep '^DEPLOYKIT_' | sort > pre-deploy.env\n"
        + ('echo "outside the deploy window" >&2; exit 4\n' if refuse else "exit 0\n")
    )
    post = directory / "post-deploy"
    post.write_text(
        "#!/bin/sh\nenv | grep '^DEPLOYKIT_' | sort > post-deploy.env\ncat > post-deploy.json\n"
    )
    for hook in (pre, post):
        hook.chmod(0o755)
    return directory


def variables(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_a_failing_pre_deploy_hook_refuses_before_anything_changes(
    lab_up: lab.LabUpResult, live_artifact: tuple[str, Path], tmp_path: Path
) -> None:
    live, artifact = live_artifact
    hooks = write_hooks(tmp_path / "hooks", refuse=True)
    proc = deploykit("deploy", "--json", "--artifact", str(artifact), "--hooks", str(hooks))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    refused = last_json(proc)
    assert refused["outcome"] == "refused", refused
    assert "the pre-deploy hook exited 4" in refused["message"]
    assert "outside the deploy window; nothing was changed" in refused["message"]
    # It ran with the lock held and the nodes surveyed: it was told what is live and where.
    seen = variables(hooks / "pre-deploy.env")
    clones = sorted(h.name for h in lab_up.hosts if {"app", "worker", "lb"} & set(h.groups))
    assert seen["DEPLOYKIT_ACTION"] == "deploy" and seen["DEPLOYKIT_APP"] == APP
    assert seen["DEPLOYKIT_RELEASE"] == seen["DEPLOYKIT_PREVIOUS"] == live
    assert seen["DEPLOYKIT_HOSTS"].split() == clones
    # No post hook for a refusal; the history records it; the lock is free again.
    assert not (hooks / "post-deploy.env").exists()
    records = last_json(deploykit("releases", "--json", "--limit", "1"))["records"]
    assert records[-1]["outcome"] == "refused"
    assert "the pre-deploy hook exited 4" in records[-1]["failure"]
    lock = last_json(deploykit("lock", "status", "--json"))
    assert lock.get("held") is False, lock


def test_post_deploy_and_the_notification_get_the_summary(
    live_artifact: tuple[str, Path], tmp_path: Path, receiver: tuple[str, list[Any]]
) -> None:
    live, artifact = live_artifact
    url, received = receiver
    hooks = write_hooks(tmp_path / "hooks", refuse=False)
    proc = deploykit(
        "deploy", "--json", "--artifact", str(artifact), "--hooks", str(hooks), "--notify", url
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = last_json(proc)
    assert summary["outcome"] == "unchanged" and summary["release"] == live, summary
    seen = variables(hooks / "post-deploy.env")
    assert seen["DEPLOYKIT_HOOK"] == "post-deploy" and seen["DEPLOYKIT_OUTCOME"] == "unchanged"
    assert seen["DEPLOYKIT_CHANGED_HOSTS"] == ""
    assert json.loads((hooks / "post-deploy.json").read_text()) == summary
    assert received == [summary]
    # The URL carries a token: it is never printed.
    assert "TOKEN-NEVER-PRINTED" not in proc.stdout + proc.stderr
    logs = [json.loads(line).get("message", "") for line in proc.stdout.splitlines()[:-1]]
    assert any(line.startswith("pre-deploy hook: exited 0") for line in logs), logs
    assert any(line.startswith("post-deploy hook: exited 0") for line in logs), logs
    assert "notified the receiver of the summary" in logs
