"""The command line's tables at 80 columns: status, the deploy and rollback summary and the
history, from a fleet of three clones, a worker and a balancer with long release ids. No line is
wider than the terminal, each node's release is its short form on the node's own line, and --json
still says every id whole."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from deploykit import cli
from deploykit.release import short_release_id
from deploykit.rollout import NodeOutcome, NodeStatus, RolloutResult, Rollouts, StatusReport

WIDTH = 80
# As deploykit build names it, and with a version that repeats the application's name.
LONG_IDS = ["1.0.4-rc.1+build.7-da107a5af7e7", "shop-1.0.4-rc.1+build.7-da107a5af7e7"]
PREVIOUS = "shop-1.0.3-0b9c2e11f4d2"
CHECKSUM = "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6"


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Console:
    """An 80-column terminal that both of the command line's consoles print to."""
    recorded = Console(width=WIDTH, record=True, color_system=None)
    monkeypatch.setattr(cli, "out", recorded)
    monkeypatch.setattr(cli, "console", recorded)
    return recorded


def lines_of(terminal: Console) -> list[str]:
    return terminal.export_text().splitlines()


def line_of(lines: list[str], host: str) -> str:
    """The table row that starts with ``host``."""
    return next(line for line in lines if line.startswith(f"{host} "))


def assert_fits(lines: list[str]) -> None:
    wide = [line for line in lines if len(line.rstrip()) > WIDTH]
    assert not wide, f"lines wider than {WIDTH} columns: {wide}"


def fleet(live: str) -> StatusReport:
    """Three clones (app3 still on the previous release, its current link already switched and
    its health path failing), a worker and a balancer."""

    def runner(host: str, role: str, release: str, **more: Any) -> NodeStatus:
        return NodeStatus(
            host=host, role=role, groups=[role], release=release, current=release,
            checksum=CHECKSUM, service="active", releases=[PREVIOUS, live], **more,
        )  # fmt: skip

    balancer = NodeStatus(
        host="lb1", role="lb", groups=["lb"], release=live, current=live,
        service="3/3 app servers UP",
    )  # fmt: skip
    return StatusReport(
        app="shop",
        nodes=[
            runner("app1", "app", live, haproxy="UP"),
            runner("app2", "app", live, haproxy="UP"),
            runner("app3", "app", PREVIOUS, haproxy="DRAIN", problem="health path: 503"),
            runner("worker1", "worker", live),
            balancer,
        ],
    )


@pytest.mark.parametrize("live", LONG_IDS)
def test_status_fits_80_columns_with_one_short_id_per_node(
    live: str, terminal: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = fleet(live)
    report.nodes[2].current = live
    monkeypatch.setattr(Rollouts, "status", lambda self, app_name=None: report)
    assert cli.main(["status"]) == 0
    lines = lines_of(terminal)
    assert_fits(lines)
    assert lines[0].startswith("shop: live DRIFT")
    short, previous = short_release_id(live, "shop"), short_release_id(PREVIOUS, "shop")
    assert (short, previous) == ("1.0.4-rc.1-da107a5", "1.0.3-0b9c2e1")
    for host in ("app1", "app2", "worker1", "lb1"):
        assert short in line_of(lines, host)
    assert previous in line_of(lines, "app3")
    # app3's current link points to the new release: the row under it says so.
    below_app3 = lines[lines.index(line_of(lines, "app3")) + 1]
    assert below_app3.split() == ["current", short]
    assert "app3 (app): health path: 503" in lines
    assert CHECKSUM[:12] in line_of(lines, "app1")


def test_status_names_the_live_release_whole_once(
    terminal: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = LONG_IDS[0]
    report = fleet(live)
    report.nodes[2] = NodeStatus(
        host="app3", role="app", groups=["app"], release=live, current=live, service="active",
        checksum=CHECKSUM, haproxy="UP",
    )  # fmt: skip
    monkeypatch.setattr(Rollouts, "status", lambda self, app_name=None: report)
    assert cli.main(["status"]) == 0
    lines = lines_of(terminal)
    assert_fits(lines)
    assert lines[0].rstrip() == f"shop: live {live}"
    assert sum(live in line for line in lines) == 1
    assert not any(line.split()[1:2] == ["current"] for line in lines if line.strip())


def test_status_says_a_balancer_is_in_maintenance(
    terminal: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = fleet(LONG_IDS[0])
    report.nodes[-1].maintenance = {
        "enabled": True, "message": "Back at noon", "allow": ["10.0.0.0/8"], "retry_after": 120,
        "pages": True, "since": "2026-12-04T14:00:00Z",
    }  # fmt: skip
    monkeypatch.setattr(Rollouts, "status", lambda self, app_name=None: report)
    assert cli.main(["status"]) == 0
    lines = lines_of(terminal)
    assert_fits(lines)
    text = " ".join(" ".join(lines).split())
    assert "lb1: maintenance ON since 2026-12-04T14:00:00Z: other requests get 503" in text
    assert "Retry-After 120 s; baked pages still served; allowed: 10.0.0.0/8" in text
    assert "message: Back at noon" in text


@pytest.mark.parametrize("live", LONG_IDS)
def test_status_json_keeps_every_id_whole(
    live: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = fleet(live)
    monkeypatch.setattr(Rollouts, "status", lambda self, app_name=None: report)
    assert cli.main(["status", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer == report.to_dict()
    assert [node["release"] for node in answer["nodes"]] == [live, live, PREVIOUS, live, live]


def rollout_result(release: str) -> RolloutResult:
    """A deploy that switched app1, app2 and the worker and returned app3, whose health path
    failed, to the previous release."""
    result = RolloutResult(
        action="deploy", app="shop", release=release, previous=PREVIOUS, outcome="failed",
        seconds=42.3, failure="app3: step ready: health path: 503",
    )  # fmt: skip
    steps = {"stage": 3.2, "drain": 2.0, "switch": 0.4, "ready": 1.9}
    for host, role in (("app1", "app"), ("app2", "app"), ("app3", "app"), ("worker1", "worker")):
        result.nodes[f"{host}/{role}"] = NodeOutcome(
            host=host, role=role, before=PREVIOUS, target=release, outcome="switched",
            seconds=dict(steps),
        )  # fmt: skip
    app3 = result.nodes["app3/app"]
    app3.outcome, app3.step = "rolled_back", "ready"
    app3.message = f"health path: 503 (returned to {PREVIOUS})"
    return result


@pytest.mark.parametrize("release", LONG_IDS)
def test_the_deploy_summary_fits_80_columns(
    release: str, terminal: Console, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    artifact = tmp_path / "shop.tar.gz"
    artifact.write_bytes(b"")
    result = rollout_result(release)
    monkeypatch.setattr(Rollouts, "deploy", lambda self, *args, **kwargs: result)
    assert cli.main(["deploy", "--artifact", str(artifact)]) == 1
    lines = lines_of(terminal)
    assert_fits(lines)
    short, previous = short_release_id(release, "shop"), short_release_id(PREVIOUS, "shop")
    for host in ("app1", "app2", "worker1"):
        assert line_of(lines, host).split()[2:5] == [previous, short, "switched"]
    assert line_of(lines, "app3").split()[2:5] == [previous, previous, "rolled_back"]
    # The seconds of the node's steps, added up.
    assert line_of(lines, "app1").split()[-1] == "7.5"
    # The message below the table, whole.
    message = f"app3 (app) rolled_back at ready: health path: 503 (returned to {PREVIOUS})"
    assert message in " ".join(line.strip() for line in lines)


def test_the_rollback_summary_fits_80_columns(
    terminal: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = rollout_result(PREVIOUS)
    result.action, result.previous, result.outcome, result.failure = (
        "rollback", LONG_IDS[1], "succeeded", None,
    )  # fmt: skip
    for node in result.nodes.values():
        node.before, node.outcome, node.step, node.message = LONG_IDS[1], "switched", None, None
    monkeypatch.setattr(Rollouts, "rollback", lambda self, **kwargs: result)
    assert cli.main(["rollback"]) == 0
    lines = lines_of(terminal)
    assert_fits(lines)
    assert lines[0].rstrip() == f"rollback shop {PREVIOUS}"
    for host in ("app1", "app2", "app3", "worker1"):
        assert line_of(lines, host).split()[2:4] == ["1.0.4-rc.1-da107a5", "1.0.3-0b9c2e1"]


def history(app: str | None = "shop") -> list[dict[str, Any]]:
    new = LONG_IDS[1]
    return [
        {"recorded": "2026-12-03T14:00:00Z", "who": "ada@ctl", "action": "deploy", "app": app,
         "from": PREVIOUS, "to": new, "outcome": "succeeded", "seconds": 42.3},
        {"recorded": "2026-12-03T15:10:00Z", "who": "ada@ctl", "action": "deploy", "app": app,
         "from": new, "to": "shop-1.0.5-c0ffee123456", "outcome": "rolled_back", "seconds": 61.0,
         "failure": "app3: step ready: health path: 503"},
        {"recorded": "2026-12-03T15:20:00Z", "who": "bob@ctl", "action": "lock release",
         "outcome": "forced",
         "holder": {"who": "ada@ctl", "command": "deploy", "release": new},
         "renewed": 90.0, "stale": True},
    ]  # fmt: skip


def test_the_history_fits_80_columns(terminal: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Rollouts, "ledger", lambda self, *argv: {"records": history()})
    assert cli.main(["releases"]) == 0
    lines = lines_of(terminal)
    assert_fits(lines)
    assert lines[0].startswith("shop: deploy history")
    first, second = line_of(lines, "2026-12-03T14:00:00Z"), line_of(lines, "2026-12-03T15:10:00Z")
    # Each record's "to" on the line under its "from".
    assert "1.0.3-0b9c2e1" in first
    assert "→ 1.0.4-rc.1-da107a5" in lines[lines.index(first) + 1]
    assert "1.0.4-rc.1-da107a5" in second
    assert "→ 1.0.5-c0ffee1" in lines[lines.index(second) + 1]
    text = " ".join(line.strip() for line in lines)
    assert "2026-12-03T15:10:00Z: app3: step ready: health path: 503" in text
    assert "2026-12-03T15:20:00Z: removed ada@ctl's lock (deploy" in text


def test_a_history_of_two_applications_names_each_record_s(
    terminal: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = history()[:1]
    records.append(
        {"recorded": "2026-12-04T09:00:00Z", "who": "ada@ctl", "action": "deploy",
         "app": "notes", "replaced": "shop", "replaced_release": LONG_IDS[1], "from": None,
         "to": "2.0.0-c0ffee123456", "outcome": "succeeded", "seconds": 50.2},
    )  # fmt: skip
    monkeypatch.setattr(Rollouts, "ledger", lambda self, *argv: {"records": records})
    assert cli.main(["releases"]) == 0
    lines = lines_of(terminal)
    assert_fits(lines)
    assert lines[0].startswith("deploy history")
    shop, notes = line_of(lines, "2026-12-03T14:00:00Z"), line_of(lines, "2026-12-04T09:00:00Z")
    assert shop.split()[2:4] == ["deploy", "1.0.3-0b9c2e1"]
    assert lines[lines.index(shop) + 1].split() == ["shop", "→", "1.0.4-rc.1-da107a5"]
    assert lines[lines.index(notes) + 1].split() == ["notes", "→", "2.0.0-c0ffee1"]


def test_the_history_json_keeps_every_record_whole(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    records = history()
    monkeypatch.setattr(Rollouts, "ledger", lambda self, *argv: {"records": records})
    assert cli.main(["releases", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"records": records}


def test_status_says_which_balancer_holds_the_floating_address(
    terminal: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = fleet(LONG_IDS[0])
    second = dataclasses.replace(report.nodes[-1], host="lb2")
    report.nodes.append(second)
    report.nodes[-2].virtual_address = {"address": "203.0.113.10", "held": True}
    second.virtual_address = {"address": "203.0.113.10", "held": False}
    monkeypatch.setattr(Rollouts, "status", lambda self, app_name=None: report)
    assert cli.main(["status"]) == 0
    assert "floating address 203.0.113.10: held by lb1" in lines_of(terminal)

    second.virtual_address = {"address": "203.0.113.10", "held": True}
    assert cli.main(["status"]) == 0
    assert "floating address 203.0.113.10: held by lb1, lb2" in lines_of(terminal)
