"""The benchmarks in their short mode, on the lab the other e2e tests share, so that every CI run
prints their figures (pytest shows them live, whatever the capture setting).

Time targets are printed by the benches, never asserted: tests check behaviour, not time. What is
asserted is the behaviour a bench measures: no failed request through a deploy, a no-op, a
rollback and a bad release under load; a killed clone costs at most the requests in flight on it
and comes back by itself; the no-op site.yml succeeds with the project's settings and with
Ansible's defaults. These run after every other e2e test (conftest orders them last): they deploy
releases of their own and leave the lab healthy on one of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from deploykit.project import project_root

ROOT = project_root()

pytestmark = [pytest.mark.e2e, pytest.mark.bench]


def run_bench(capsys: pytest.CaptureFixture[str], script: str, timeout: float) -> dict[str, Any]:
    """Run ``bench/<script> --short --json``; show its report; return its JSON summary (the last
    JSON object it printed on stdout; the human report goes to stderr)."""
    argv = [sys.executable, str(ROOT / "bench" / script), "--short", "--json"]
    proc = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )  # fmt: skip
    with capsys.disabled():
        print(f"\n\n===== bench/{script} --short (exit {proc.returncode}) =====", flush=True)
        print(proc.stderr.rstrip()[-20000:] or "(no report on stderr)", flush=True)
        if not script.startswith(("rolling", "clone")):  # fleet_speed reports on stdout
            print(proc.stdout.rstrip()[-5000:], flush=True)
    assert proc.returncode == 0, f"bench/{script} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    text = proc.stdout.strip()
    start = text.rfind("\n{") + 1 if not text.startswith("{") else 0
    summary: dict[str, Any] = json.loads(text[start:])
    # Every report carries the machine's yardstick, to compare its figures with another day's.
    assert summary["machine"]["workload_seconds"] > 0, summary.get("machine")
    return summary


def test_rolling_deploys_under_load_fail_no_request(
    shop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = run_bench(capsys, "rolling_deploy.py", timeout=1800)
    steps = {step["name"]: step for step in data["steps"]}
    assert list(steps) == [
        "deploy B",
        "deploy B again (no-op)",
        "rollback (to A)",
        "deploy BAD (rolled back)",
        "deploy HUNG (rolled back)",
    ]
    for name, step in steps.items():
        checks = step["checks"]
        assert step["load"]["total"]["requests"] > 0, name
        assert checks["zero_failures"], (name, step["load"])
        assert checks["exit_code"] and checks["outcome"], (name, step["command"])
        assert checks["clones_on_expected_release"], (name, step)


def test_a_clone_killed_under_load_costs_at_most_its_requests_in_flight(
    shop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = run_bench(capsys, "clone_loss.py", timeout=600)
    assert data["rounds"], data
    for round_ in data["rounds"]:
        assert round_["requests"] > 0, round_
        assert round_["failures"] <= round_["in_flight_at_kill"], round_
        assert round_["down_after"] is not None, round_  # HAProxy noticed
        assert round_["up_after"] is not None, round_  # and the clone came back by itself


def test_the_noop_site_yml_runs_with_ours_and_with_ansibles_defaults(
    shop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = run_bench(capsys, "fleet_speed.py", timeout=1200)
    runs = {run["settings"]: run for run in data["runs"]}
    assert set(runs) == {"project", "defaults"}, data
    assert all(run["noop_site"] > 0 for run in runs.values()), data
    assert any(key.startswith("noop_site_defaults_ratio_") for key in data), data
