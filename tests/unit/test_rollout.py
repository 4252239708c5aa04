"""The rollout's decisions that need no host: batches, the release a rollback returns to, what the
nodes' survey means (DRIFT), and the bad input a rollout refuses before contacting anyone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils import ledger
from ansible_collections.deploykit.fleet.plugins.modules.ledger import finish_settled
from deploykit.errors import BadInput, DeploykitError
from deploykit.inventory import Layout
from deploykit.rollout import (
    NEVER_READY_STOP_TIMEOUT,
    RETURN_STOP_TIMEOUT,
    ForeignApplication,
    NodeOutcome,
    RolloutResult,
    Rollouts,
    StatusReport,
    _Tracker,
    app_from_history,
    is_settled,
    lacking,
    parse_batch,
    plan_batches,
    previous_release,
    status_from_survey,
    unreachable_hint,
)
from deploykit.runner import ModuleResult, RunResult, TaskFailure

ROOT = Path(__file__).resolve().parents[2]
CLONES = [f"app{n}" for n in range(1, 7)]


@pytest.mark.parametrize(
    ("hosts", "batch", "canary", "expected"),
    [
        (CLONES[:3], "25%", True, [["app1"], ["app2"], ["app3"]]),
        (CLONES[:3], "1", False, [["app1"], ["app2"], ["app3"]]),
        (CLONES[:3], "2", True, [["app1"], ["app2", "app3"]]),
        # Never every clone at once: one keeps serving while the others switch.
        (CLONES[:3], "100%", False, [["app1", "app2"], ["app3"]]),
        (CLONES[:3], "10", True, [["app1"], ["app2", "app3"]]),
        (CLONES, "50%", True, [["app1"], ["app2", "app3", "app4"], ["app5", "app6"]]),
        (CLONES, "34%", False, [["app1", "app2", "app3"], ["app4", "app5", "app6"]]),
        (["app1"], "25%", True, [["app1"]]),
        ([], "25%", True, []),
    ],
)
def test_batches_start_with_a_canary_and_never_take_every_clone(
    hosts: list[str], batch: str, canary: bool, expected: list[list[str]]
) -> None:
    assert plan_batches(hosts, batch, canary=canary) == expected


@pytest.mark.parametrize("text", ["0", "0%", "101%", "-1", "half", "2.5", "", "25 %"])
def test_a_batch_that_is_not_a_count_or_a_percentage_is_refused(text: str) -> None:
    with pytest.raises(BadInput, match="--batch"):
        parse_batch(text)


def test_a_rollback_returns_to_what_the_history_says_was_live_before() -> None:
    history: list[dict[str, Any]] = [
        {"outcome": "succeeded", "from": "r1", "to": "r2"},
        {"outcome": "rolled_back", "from": "r2", "to": "r9"},
        {"outcome": "succeeded", "from": "r2", "to": "r3"},
    ]
    # Install order says r4 came before r3: the history (what was live) wins over file order.
    assert previous_release("r3", history, ["r1", "r2", "r4", "r3"]) == "r2"
    assert previous_release("r2", history, ["r1", "r2"]) == "r1"
    # No history: the release installed just before the live one.
    assert previous_release("r3", [], ["r1", "r2", "r3"]) == "r2"
    assert previous_release("r1", [], ["r1", "r2"]) is None


def _survey(app: str, release: str, current: str | None = None) -> dict[str, Any]:
    return {
        "current": current or release,
        "checksum": f"sum-{release}",
        "releases": ["r1", "r2"],
        "units": {f"shop-{app}.service": {"active": "active", "pid": 42, "release": release}},
        **({"health": {"status": 200, "release": release}} if app == "web" else {}),
    }


def _nodes(
    app2_release: str = "r2", app2_current: str | None = None, app2_haproxy: str = "UP"
) -> dict[str, Any]:
    servers = [{"server": "app1", "status": "UP"}, {"server": "app2", "status": app2_haproxy}]
    return {
        "app1": {"groups": ["app"], "app": _survey("web", "r2")},
        "app2": {"groups": ["app"], "app": _survey("web", app2_release, app2_current)},
        "worker1": {"groups": ["worker"], "worker": _survey("worker", "r2")},
        "lb1": {"groups": ["lb"], "lb": {"servers": servers}, "static": "r2"},
    }


def test_the_artifact_goes_without_asking_to_the_clones_and_workers_that_lack_the_release() -> None:
    nodes = _nodes()
    nodes["app2"]["app"]["releases"] = ["r1"]
    report = status_from_survey("shop", nodes)
    # app1 and worker1 keep r1 and r2, app2 only r1; the balancer's kept releases are not
    # surveyed: the stage asks it.
    assert lacking(report, "r2") == ["app2"]
    assert lacking(report, "r3") == ["app1", "app2", "worker1"]
    assert lacking(report, "r1") == []


def test_one_release_everywhere_is_no_drift() -> None:
    report = status_from_survey("shop", _nodes())
    assert report.live == "r2"
    assert report.drift == []
    assert [n.haproxy for n in report.of("app")] == ["UP", "UP"]
    assert report.to_dict()["drift"] is False


def test_a_clone_on_another_release_is_drift_naming_it() -> None:
    report = status_from_survey("shop", _nodes(app2_release="r1"))
    assert report.live is None
    assert any("app2" in reason and "r1" in reason for reason in report.drift)
    assert report.to_dict()["drift"] is True


def test_a_clone_whose_process_is_not_its_current_release_is_drift() -> None:
    report = status_from_survey("shop", _nodes(app2_current="r1"))
    assert any("app2" in r and "current points to r1" in r for r in report.drift)


def test_a_clone_on_the_release_and_up_is_settled() -> None:
    report = status_from_survey("shop", _nodes())
    assert all(is_settled(node, "r2") for node in report.nodes)
    assert not any(is_settled(node, "r3") for node in report.nodes)


def test_a_node_configured_by_other_code_is_not_settled() -> None:
    # After an upgrade of deploykit or an inventory change, the survey of a deploy reports the
    # node's last configuration as not the one wanted: a deploy of the same release configures it.
    nodes = _nodes()
    nodes["app2"]["configured"] = False
    nodes["lb1"]["configured"] = True  # asked and matching; app1 and worker1 not asked (status)
    report = status_from_survey("shop", nodes)
    settled = {node.host: is_settled(node, "r2") for node in report.nodes}
    assert settled == {"app1": True, "app2": False, "worker1": True, "lb1": True}
    assert [n.to_dict()["configured"] for n in report.nodes] == [None, False, True, None]


@pytest.mark.parametrize("view", ["MAINT", "DRAIN", "DOWN"])
def test_a_clone_left_out_of_service_is_not_settled_though_its_release_is_right(view: str) -> None:
    # An interrupted rollout can leave a clone in maint (HAProxy keeps it across restarts, from its
    # state file): the next deploy of the same release must ready it, not find "nothing to do".
    report = status_from_survey("shop", _nodes(app2_haproxy=view))
    settled = {node.host: is_settled(node, "r2") for node in report.of("app")}
    assert settled == {"app1": True, "app2": False}


def _units(app: str, active: str, enabled: str) -> dict[str, Any]:
    return {f"{app}-web.service": {"active": active, "enabled": enabled}}


@pytest.mark.parametrize(
    ("active", "enabled", "serves"),
    [
        ("active", "enabled", True),
        # A unit in a restart loop holds, or will take, the port.
        ("activating", "enabled", True),
        ("failed", "enabled", True),
        ("active", "disabled", True),
        # What a retired application leaves: its unit file, stopped and disabled.
        ("inactive", "disabled", False),
        ("failed", "disabled", False),
    ],
)
def test_another_application_on_a_clone_is_foreign_while_its_units_serve(
    active: str, enabled: str, serves: bool
) -> None:
    nodes = _nodes()
    nodes["app2"]["apps"] = {
        "shop": _units("shop", "active", "enabled"),
        "notes": _units("notes", active, enabled),
    }
    report = status_from_survey("shop", nodes)
    assert report.foreign == ({"notes": {"notes-web.service": ["app2"]}} if serves else {})
    # Seen from notes' side, shop is the foreign one wherever it runs.
    assert status_from_survey("notes", nodes).foreign == {"shop": {"shop-web.service": ["app2"]}}


def _rollouts(tmp_path: Path) -> tuple[Rollouts, list[str]]:
    lines: list[str] = []
    return Rollouts(ROOT, tmp_path / "hosts.yml", log=lines.append), lines


def test_a_deploy_onto_a_fleet_that_serves_another_application_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    nodes = _nodes()
    for host in ("app1", "app2"):
        nodes[host]["apps"] = {"shop": _units("shop", "active", "enabled")}
    status = status_from_survey("notes", nodes)
    result = RolloutResult(action="deploy", app="notes", release="notes-1", previous=None)
    rollouts, _ = _rollouts(tmp_path)
    with pytest.raises(ForeignApplication) as refused:
        rollouts._refuse_foreign(result, status)
    assert refused.value.exit_code == 2
    message = str(refused.value)
    assert "the fleet serves shop, not notes" in message
    assert "shop-web.service on app1, app2" in message
    assert "nothing was changed" in message
    # The attempt is recorded as refused in the history.
    assert result.outcome == "refused"
    assert result.record()["failure"] == refused.value.message


def test_a_first_deploy_says_up_front_which_path_haproxy_checks(tmp_path: Path) -> None:
    nodes = _nodes()
    nodes["lb1"]["check_path"] = "/livez"
    for host in ("app1", "app2"):
        nodes[host]["app"]["current"] = None
    status = status_from_survey("notes", nodes)
    result = RolloutResult(action="deploy", app="notes", release="notes-1", previous=None)
    rollouts, lines = _rollouts(tmp_path)
    rollouts._refuse_foreign(result, status)
    assert any("HAProxy checks the clones on /livez" in line for line in lines), lines


def test_a_clone_the_return_could_not_reach_is_reported_with_the_command_that_returns_it(
    tmp_path: Path,
) -> None:
    rollouts, _ = _rollouts(tmp_path)
    known = NodeOutcome(host="app1", role="app", before="r1", target="r2")
    first = NodeOutcome(host="app1", role="app", before=None, target="r2")
    assert (
        rollouts._return_command(known) == f"deploykit rollback -i {tmp_path / 'hosts.yml'} --to r1"
    )
    assert "deploykit deploy -i" in rollouts._return_command(first)
    # A replace's return: the replaced application comes back by replacing the new one again.
    replacing = RolloutResult(action="deploy", app="notes", release="n1", previous=None)
    replacing.replaced = "shop"
    assert rollouts._return_command(known, replacing=replacing) == (
        f"deploykit deploy -i {tmp_path / 'hosts.yml'} --replace notes --artifact "
        "<the artifact of r1>"
    )


def test_a_deploy_with_a_bad_batch_is_refused_before_any_host(tmp_path: Path) -> None:
    artifact = tmp_path / "missing.tar.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", "deploy", "--artifact", str(artifact), "--batch", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--batch '0': expected a number of clones" in proc.stderr


def test_the_history_keeps_a_failed_nodes_cause_bounded() -> None:
    result = RolloutResult(action="deploy", app="shop", release="r2", previous="r1")
    journal = [f"line {n}" for n in range(40)]
    result.nodes["app1/app"] = NodeOutcome(
        host="app1", role="app", before="r1", target="r2", outcome="failed", step="switch",
        message="x" * 5000, journal=journal,
    )  # fmt: skip
    result.nodes["app2/app"] = NodeOutcome(host="app2", role="app", before="r1", target="r2")
    nodes = result.record()["nodes"]
    assert len(nodes["app1/app"]["message"]) == 1000
    assert nodes["app1/app"]["journal"] == journal[-15:]
    assert "message" not in nodes["app2/app"] and "journal" not in nodes["app2/app"]
    assert result.to_dict()["nodes"]["app1/app"]["journal"] == journal


def test_the_application_comes_from_the_newest_rollout_carried_out_not_a_refused_one() -> None:
    records = [
        {"app": "shop", "outcome": "succeeded"},
        {"app": "shop", "outcome": "rolled_back"},
        {"app": "minimal", "outcome": "refused"},
        {"corrupt": "history.jsonl:4"},
    ]
    assert app_from_history(records) == "shop"
    assert app_from_history([{"app": "minimal", "outcome": "refused"}]) is None
    assert app_from_history([]) is None


def test_a_replace_that_did_not_succeed_leaves_the_fleet_to_the_application_it_replaced() -> None:
    replaced = {"app": "notes", "replaced": "shop", "outcome": "rolled_back"}
    assert app_from_history([{"app": "shop", "outcome": "succeeded"}, replaced]) == "shop"
    assert app_from_history([{**replaced, "outcome": "succeeded"}]) == "notes"


def _serving_shop(check_path: str = "/livez") -> StatusReport:
    nodes = _nodes()
    nodes["lb1"]["check_path"] = check_path
    for host in ("app1", "app2"):
        nodes[host]["apps"] = {"shop": _units("shop", "active", "enabled")}
        nodes[host]["app"]["current"] = None
    return status_from_survey("notes", nodes)


NOTES_CONTRACT = {"name": "notes", "health_path": "/health", "live_path": "/livez"}


def test_a_replace_moves_the_fleet_from_the_application_it_names(tmp_path: Path) -> None:
    result = RolloutResult(action="deploy", app="notes", release="notes-1", previous=None)
    rollouts, lines = _rollouts(tmp_path)
    rollouts._refuse_foreign(result, _serving_shop(), replace="shop", contract=NOTES_CONTRACT)
    assert result.replaced == "shop"
    assert result.record()["replaced"] == "shop"
    assert any("replacing shop with notes" in line for line in lines), lines


def test_a_replace_naming_another_application_than_the_fleet_serves_is_refused(
    tmp_path: Path,
) -> None:
    result = RolloutResult(action="deploy", app="notes", release="notes-1", previous=None)
    rollouts, _ = _rollouts(tmp_path)
    with pytest.raises(ForeignApplication) as refused:
        rollouts._refuse_foreign(result, _serving_shop(), replace="blog", contract=NOTES_CONTRACT)
    assert refused.value.exit_code == 2
    assert "the fleet serves shop, not notes" in str(refused.value)
    assert "--replace shop" in str(refused.value.hint)
    assert result.outcome == "refused" and result.replaced is None


def test_a_refused_foreign_deploy_names_replace_as_a_way_forward(tmp_path: Path) -> None:
    result = RolloutResult(action="deploy", app="notes", release="notes-1", previous=None)
    rollouts, _ = _rollouts(tmp_path)
    with pytest.raises(ForeignApplication) as refused:
        rollouts._refuse_foreign(result, _serving_shop(), contract=NOTES_CONTRACT)
    assert "deploykit deploy --replace shop" in str(refused.value.hint)


def test_a_replace_is_refused_when_the_new_application_does_not_declare_haproxys_check_path(
    tmp_path: Path,
) -> None:
    result = RolloutResult(action="deploy", app="notes", release="notes-1", previous=None)
    rollouts, _ = _rollouts(tmp_path)
    contract = {"name": "notes", "health_path": "/health"}
    with pytest.raises(ForeignApplication) as refused:
        rollouts._refuse_foreign(result, _serving_shop(), replace="shop", contract=contract)
    assert refused.value.exit_code == 2
    message = str(refused.value)
    assert "HAProxy checks the clones on /livez, which notes does not declare" in message
    assert "haproxy_backend_health_path" in str(refused.value.hint)
    assert result.outcome == "refused"


def test_the_return_of_a_replace_brings_the_replaced_application_back(tmp_path: Path) -> None:
    rollouts, _ = _rollouts(tmp_path)
    seen: list[dict[str, Any]] = []

    def fake_run(playbook: str, extravars: dict[str, Any], **_: Any) -> Any:
        seen.append(dict(extravars))
        raise StopIteration

    rollouts._run = fake_run  # type: ignore[method-assign]
    result = RolloutResult(action="deploy", app="notes", release="n1", previous=None)
    result.replaced = "shop"
    for returning in (False, True):
        with pytest.raises(StopIteration):
            rollouts._roll(result, {"app1": "x"}, [["app1"]], returning=returning)
    assert (seen[0]["rollout_app"], seen[0]["rollout_replaced_app"]) == ("notes", "shop")
    assert (seen[1]["rollout_app"], seen[1]["rollout_replaced_app"]) == ("shop", "notes")


def test_a_worker_node_of_an_application_without_a_worker_holds_its_current_release() -> None:
    nodes = _nodes()
    nodes["worker1"] = {
        "groups": ["worker"],
        "apps": {},  # no unit of the application installed on the worker node
        "worker": {"current": "r1", "units": {"notes-worker@.service": {"active": "inactive"}}},
    }
    report = status_from_survey("notes", nodes)
    worker = next(n for n in report.nodes if n.role == "worker")
    assert worker.release == "r1"
    # With its unit installed, a worker that does not run is not on any release.
    installed = {"notes-worker@.service": {"active": "inactive", "enabled": "disabled"}}
    nodes["worker1"]["apps"] = {"notes": installed}
    worker = next(n for n in status_from_survey("notes", nodes).nodes if n.role == "worker")
    assert worker.release is None


def _finish_settled(tmp_path: Path, nodes: dict[str, Any], *, hosts: list[str]) -> dict[str, Any]:
    """deploykit.fleet.ledger's "finish settled" on a real ledger directory holding the lock."""
    holder = {"who": "me@here", "command": "deploy", "release": "r2", "token": "t0k", "lease": 60}
    assert ledger.lock_acquire(str(tmp_path), holder)["acquired"]
    record = RolloutResult(
        action="deploy", app="shop", release="r2", previous="r2", outcome="unchanged",
        holder={**holder, "started": "2026-12-04T10:00:00Z"},
    ).record()  # fmt: skip
    params = {"dir": str(tmp_path), "token": "t0k", "record": record, "surveys": nodes,
              "hosts": hosts}  # fmt: skip
    return finish_settled(params)


def test_a_deploy_with_nothing_to_do_is_finished_by_the_ledger_in_the_first_run(
    tmp_path: Path,
) -> None:
    answer = _finish_settled(tmp_path, _nodes(), hosts=["app1", "app2", "worker1", "lb1"])
    assert answer["settled"] and answer["released"] and answer["appended"], answer
    assert not ledger.lock_status(str(tmp_path))["held"]
    (record,) = ledger.history_show(str(tmp_path))["records"]
    assert (record["outcome"], record["from"], record["to"], record["who"]) == (
        "unchanged", "r2", "r2", "me@here",
    )  # fmt: skip
    assert record["nodes"] == {
        key: {"outcome": "unchanged", "step": None, "seconds": {}}
        for key in ("app1/app", "app2/app", "lb1/lb", "worker1/worker")
    }


@pytest.mark.parametrize(
    ("nodes", "hosts"),
    [
        (_nodes(app2_release="r1"), ["app1", "app2", "worker1", "lb1"]),
        (_nodes(app2_haproxy="MAINT"), ["app1", "app2", "worker1", "lb1"]),
        # A host that could not be surveyed (unreachable): nothing is decided without it.
        (_nodes(), ["app1", "app2", "app3", "worker1", "lb1"]),
    ],
    ids=["a-clone-on-another-release", "a-clone-in-maint", "a-host-not-surveyed"],
)
def test_the_ledger_leaves_a_deploy_with_something_to_do_to_the_controller(
    tmp_path: Path, nodes: dict[str, Any], hosts: list[str]
) -> None:
    assert _finish_settled(tmp_path, nodes, hosts=hosts)["settled"] is False
    assert ledger.lock_status(str(tmp_path))["held"]
    assert ledger.history_show(str(tmp_path))["records"] == []


def test_a_refusal_for_unreachable_hosts_says_how_to_go_on() -> None:
    assert unreachable_hint([], "deploy") is None
    hint = unreachable_hint(["lb1"], "rollback")
    assert hint is not None
    assert "take lb1 out of the inventory" in hint
    assert "deploykit rollback again" in hint
    assert "deploykit provision" in hint


# --- the application deploykit status learns from the history, in its one run ---------------------

TWO_BALANCERS = Layout(groups={"lb": ["lb1", "lb2"], "app": ["app1"]}, app_names=frozenset())


def _history_run(answers: dict[str, dict[str, Any] | None], unreachable: list[str]) -> RunResult:
    """status.yml's run as the controller reads it: each balancer's "history show" answer (None:
    the balancer answered nothing), the balancers that could not be reached."""
    results = [
        ModuleResult(host=host, action="deploykit.fleet.ledger", ok=True, res={"ledger": answer})
        for host, answer in answers.items()
        if answer is not None
    ]
    failures = [
        TaskFailure(host=host, task="Read the history's last records", message="ssh: timed out",
                    unreachable=True)
        for host in unreachable
    ]  # fmt: skip
    return RunResult(status="failed" if failures else "successful", rc=4 if failures else 0,
                     recap={}, failures=failures, artifacts_dir=None, results=results)  # fmt: skip


def test_status_learns_the_application_from_the_first_balancer_that_answered(
    tmp_path: Path,
) -> None:
    rollouts, _ = _rollouts(tmp_path)
    both = _history_run({"lb2": {"app": "notes"}, "lb1": {"app": "shop"}}, [])
    assert rollouts._app_named_by(both, TWO_BALANCERS) == "shop"  # the group's order, not the run's
    first_down = _history_run({"lb2": {"app": "notes"}}, ["lb1"])
    assert rollouts._app_named_by(first_down, TWO_BALANCERS) == "notes"


def test_status_names_why_it_learned_no_application(tmp_path: Path) -> None:
    rollouts, _ = _rollouts(tmp_path)
    with pytest.raises(BadInput, match="which application"):
        rollouts._app_named_by(
            _history_run({"lb1": {"app": None, "records": []}}, []), TWO_BALANCERS
        )
    with pytest.raises(DeploykitError, match=r"could not read the deploy ledger: .*unreachable"):
        rollouts._app_named_by(_history_run({}, ["lb1", "lb2"]), TWO_BALANCERS)


def test_a_lock_taken_for_an_application_no_history_names_is_released(tmp_path: Path) -> None:
    """begin.yml learns the application from the lock's own answer; with nothing named anywhere,
    the lock it took is released (by its token) before the controller says which is missing."""
    rollouts, _ = _rollouts(tmp_path)
    runs: list[tuple[str, dict[str, Any]]] = []
    lock = {"acquired": True, "holder": {"token": "t0k"}, "records": [], "app": None}

    def fake_run(playbook: str, extravars: dict[str, Any], **_: Any) -> RunResult:
        runs.append((playbook, dict(extravars)))
        answer = lock if playbook == "begin.yml" else {"released": True}
        results = [ModuleResult(host="lb1", action="deploykit.fleet.ledger", ok=True,
                                res={"ledger": answer})]  # fmt: skip
        return RunResult(status="failed", rc=2, recap={}, failures=[], artifacts_dir=None,
                         results=results)  # fmt: skip

    rollouts._run = fake_run  # type: ignore[method-assign]
    with pytest.raises(BadInput, match="which application"):
        rollouts._begin(None, {"token": "t0k", "command": "rollback"}, wait=0)
    assert [playbook for playbook, _ in runs] == ["begin.yml", "ledger.yml"]
    assert runs[0][1]["rollout_app_from_history"] is True
    assert runs[1][1]["rollout_ledger"] == {"command": "lock release", "token": "t0k"}


# --- the return's stop bound ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failed_step", "expected"),
    [
        # Its release never passed the health gate: nothing to finish, killed after 0.5 s.
        ("switch", {"app2": NEVER_READY_STOP_TIMEOUT}),
        # Its release answered the gate; drained: a graceful stop, within the return's bound.
        ("ready", {}),
    ],
)
def test_a_clone_whose_release_never_passed_its_gate_gets_the_shortest_stop_on_the_return(
    tmp_path: Path, failed_step: str, expected: dict[str, float]
) -> None:
    rollouts, _ = _rollouts(tmp_path)
    rollouts._groups = {"app1": ["app"], "app2": ["app"]}
    seen: list[dict[str, Any]] = []

    def fake_run(playbook: str, extravars: dict[str, Any], **_: Any) -> Any:
        seen.append(dict(extravars))
        return RunResult(status="successful", rc=0, recap={}, failures=[], artifacts_dir=None)

    rollouts._run = fake_run  # type: ignore[method-assign]
    result = RolloutResult(action="deploy", app="shop", release="r2", previous="r1")
    for host in ("app1", "app2"):
        result.nodes[f"{host}/app"] = NodeOutcome(host=host, role="app", before="r1", target="r2")
    result.nodes["app2/app"].step = failed_step
    failed = _Tracker(None, rollouts._groups)
    failed.touched = {"app1", "app2"}
    layout = Layout(groups={"app": ["app1", "app2"], "lb": ["lb1"]}, app_names=frozenset())
    rollouts._return_touched(result, failed, layout, batch="1")
    (returned,) = seen
    assert returned["rollout_targets"] == {"app1": "r1", "app2": "r1"}
    assert returned["rollout_stop_timeout"] == RETURN_STOP_TIMEOUT
    assert returned["rollout_stop_timeouts"] == expected
    # A deploy's own switch keeps each clone's full graceful stop.
    rollouts._roll(result, {"app1": "r2"}, [["app1"]], never_ready={"app1"})
    assert "rollout_stop_timeout" not in seen[-1] and "rollout_stop_timeouts" not in seen[-1]
