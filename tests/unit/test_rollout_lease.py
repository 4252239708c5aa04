"""The controller's side of the deploy lock's lease, with no host: the renewal thread (started the
moment begin.yml reports the lock taken, stopped before finish.yml releases it, a failure logged
and never fatal, a lost lease said loudly), what a refused rollout says (live or stale: holder,
age, last renewal, the way forward), and the command line's exit codes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils import ledger
from deploykit import cli, rollout, runner
from deploykit.errors import BadInput, DeploykitError
from deploykit.rollout import LeaseRenewer, RolloutFailed, RolloutResult, Rollouts

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def lease_answer(**more: Any) -> dict[str, Any]:
    holder = {
        "who": "ada@ctl",
        "command": "deploy",
        "release": "r2",
        "since": "2026-12-03T14:00:00Z",
        "token": "t1",
        "lease": 60,
    }
    return {
        "holder": holder,
        "age": 300.0,
        "renewed": 5.0,
        "stale": False,
        "stale_after": 60.0,
        **more,
    }


# --- the renewal thread -----------------------------------------------------------------------


def test_the_renewer_renews_every_interval_until_stopped() -> None:
    calls: list[float] = []

    def renew() -> Mapping[str, Any]:
        calls.append(time.monotonic())
        return {"extended": True}

    renewer = LeaseRenewer(renew, lease=60, log=print, interval=0.05)
    assert renewer.interval == 0.05
    renewer.start()
    assert wait_for(lambda: len(calls) >= 3)
    renewer.stop()
    assert not renewer.running
    stopped_at = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped_at
    assert renewer.renewals == stopped_at and renewer.failures == 0


def test_the_renewer_renews_every_quarter_of_the_lease_by_default() -> None:
    assert LeaseRenewer(lambda: {}, lease=60, log=print).interval == 15


def test_a_failed_renewal_is_logged_and_retried_never_fatal() -> None:
    lines: list[str] = []
    answers: list[Any] = [DeploykitError("lb1: unreachable"), {"extended": True}]

    def renew() -> Mapping[str, Any]:
        answer = answers.pop(0) if answers else {"extended": True}
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    renewer = LeaseRenewer(renew, lease=60, log=lines.append, interval=0.05)
    renewer.start()
    assert wait_for(lambda: renewer.renewals >= 1)
    renewer.stop()
    assert renewer.failures == 1
    assert any(
        "could not renew" in line and "lb1: unreachable" in line and "stale after 60 s" in line
        for line in lines
    ), lines


def test_a_lease_taken_over_is_said_loudly_and_renewing_stops() -> None:
    lines: list[str] = []
    calls: list[int] = []

    def renew() -> Mapping[str, Any]:
        calls.append(1)
        taken = lease_answer(held=True, extended=False)
        taken["holder"] = dict(taken["holder"], who="bob@ctl", token="t2")
        return taken

    renewer = LeaseRenewer(renew, lease=60, log=lines.append, interval=0.05)
    renewer.start()
    assert wait_for(lambda: not renewer.running)
    assert len(calls) == 1
    assert renewer.lost is not None
    assert any("no longer this rollout's" in line and "bob@ctl" in line for line in lines), lines


# --- the rollout's lock: begin, renew, finish ------------------------------------------------


class FakeRuns:
    """Stands for ansible-runner: records each playbook run and answers with the given results."""

    def __init__(
        self,
        answers: Mapping[str, list[runner.ModuleResult]] | None = None,
        ok: Mapping[str, bool] | None = None,
    ) -> None:
        self.answers = dict(answers or {})
        self.oks = dict(ok or {})
        self.runs: list[tuple[str, dict[str, Any], str | None]] = []
        self.lock = threading.Lock()

    def __call__(
        self,
        playbook: str,
        extravars: Mapping[str, Any],
        *,
        limit: str | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        runs_subdir: str | None = None,
    ) -> runner.RunResult:
        with self.lock:
            self.runs.append((playbook, dict(extravars), runs_subdir))
        results = list(self.answers.get(playbook, []))
        if on_event is not None:
            for result in results:
                kind = "runner_on_ok" if result.ok else "runner_on_failed"
                on_event(
                    {
                        "event": kind,
                        "event_data": {
                            "host": result.host,
                            "resolved_action": result.action,
                            "res": result.res,
                        },
                    }
                )
        ok = self.oks.get(playbook, True)
        return runner.RunResult(
            status="successful" if ok else "failed",
            rc=0 if ok else 2,
            recap={},
            failures=[],
            artifacts_dir=None,
            results=results,
        )

    def played(self, playbook: str) -> list[dict[str, Any]]:
        with self.lock:
            return [extra for name, extra, _ in self.runs if name == playbook]


def ledger_result(answer: Mapping[str, Any], *, ok: bool = True) -> runner.ModuleResult:
    return runner.ModuleResult(
        host="lb1", action="deploykit.fleet.ledger", ok=ok, res={"ledger": dict(answer)}
    )


def rollouts(monkeypatch: pytest.MonkeyPatch, runs: FakeRuns, lines: list[str]) -> Rollouts:
    made = Rollouts(ROOT, ROOT / "inventories" / "none.yml", log=lines.append, lease=20)
    monkeypatch.setattr(made, "_run", runs)
    return made


def test_the_lease_is_renewed_from_the_moment_the_lock_is_taken_until_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = FakeRuns({"ledger.yml": [ledger_result({"extended": True})]})
    lines: list[str] = []
    made = rollouts(monkeypatch, runs, lines)
    holder = made._holder("deploy", "r2")
    assert holder["lease"] == 20
    taken = ledger_result({"acquired": True, "holder": holder})
    event = {
        "event": "runner_on_ok",
        "event_data": {"resolved_action": taken.action, "res": taken.res},
    }
    made._on_lock_event(event, "")  # no token: nothing to renew
    assert made._renewer is None
    made.renew_interval = 0.05
    made._on_lock_event(event, holder["token"])
    renewer = made._renewer
    assert renewer is not None and renewer.running and renewer.lease == 20
    # Renewals go through ledger.yml with the holder's token, in runs kept apart.
    assert wait_for(lambda: len(runs.played("ledger.yml")) >= 2)
    assert runs.played("ledger.yml")[0] == {
        "rollout_ledger": {"command": "lock renew", "token": holder["token"]}
    }
    assert {subdir for name, _, subdir in runs.runs if name == "ledger.yml"} == {"lease"}
    result = RolloutResult(action="deploy", app="shop", release="r2", previous="r1", holder=holder)
    made._finish(result)
    assert made._renewer is None and not renewer.running
    assert runs.played("finish.yml")[0]["rollout_token"] == holder["token"]
    renewals = len(runs.played("ledger.yml"))
    time.sleep(0.2)
    assert len(runs.played("ledger.yml")) == renewals


def test_the_finish_does_not_wait_for_a_renewal_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A renewal that runs when the rollout ends would hold its finish (the record, the lock's
    release) for its whole run: the finish runs beside it, then waits for it; none starts after."""
    renewing, let_go = threading.Event(), threading.Event()
    played: list[str] = []

    def run(playbook: str, extravars: dict[str, Any], **_: Any) -> runner.RunResult:
        played.append(playbook)
        if playbook == "ledger.yml":
            renewing.set()
            let_go.wait(10)
        answer = [ledger_result({"extended": True})] if playbook == "ledger.yml" else []
        return runner.RunResult(status="successful", rc=0, recap={}, failures=[],
                                artifacts_dir=None, results=answer)  # fmt: skip

    made = Rollouts(ROOT, ROOT / "inventories" / "none.yml", log=[].append, lease=20)
    monkeypatch.setattr(made, "_run", run)
    made.renew_interval = 0.01
    holder = made._holder("deploy", "r2")
    taken = ledger_result({"acquired": True, "holder": holder})
    made._on_lock_event(
        {
            "event": "runner_on_ok",
            "event_data": {"resolved_action": taken.action, "res": taken.res},
        },
        holder["token"],
    )
    renewer = made._renewer
    assert renewer is not None and renewing.wait(5)
    result = RolloutResult(action="deploy", app="shop", release="r2", previous="r1", holder=holder)
    finishing = threading.Thread(target=made._finish, args=(result,))
    finishing.start()
    try:
        # The finish ran while the renewal still waits, and then waits for it.
        assert wait_for(lambda: "finish.yml" in played), played
        assert finishing.is_alive() and renewer.running
    finally:
        let_go.set()
        finishing.join(5)
    assert not finishing.is_alive() and not renewer.running and made._renewer is None
    assert played == ["ledger.yml", "finish.yml"]


def test_a_refused_acquire_starts_no_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    made = rollouts(monkeypatch, FakeRuns(), [])
    refused = ledger_result({"acquired": False, **lease_answer()}, ok=False)
    event = {
        "event": "runner_on_failed",
        "event_data": {"resolved_action": refused.action, "res": refused.res},
    }
    made._on_lock_event(event, "t9")
    assert made._renewer is None


def begin_refused(
    monkeypatch: pytest.MonkeyPatch, answer: Mapping[str, Any], *, take_over: bool = False
) -> tuple[RolloutFailed, FakeRuns]:
    runs = FakeRuns({"begin.yml": [ledger_result(answer, ok=False)]}, ok={"begin.yml": False})
    made = rollouts(monkeypatch, runs, [])
    with pytest.raises(RolloutFailed) as refused:
        made._begin("shop", made._holder("deploy", "r3"), wait=0, take_over=take_over)
    assert made._renewer is None
    return refused.value, runs


def test_a_deploy_refused_by_a_live_lease_names_holder_age_renewal_and_says_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error, runs = begin_refused(monkeypatch, {"acquired": False, **lease_answer()})
    message = str(error)
    assert "held by ada@ctl (deploy r2) since 2026-12-03T14:00:00Z (taken 5 min ago)" in message
    assert "live: renewed 5 s ago (stale after 60 s without renewal)" in message
    assert "nothing was changed" in message
    assert "--wait" in message and "--take-over" in message
    # The refused attempt is recorded; the holder's lock is left alone.
    (finish,) = runs.played("finish.yml")
    assert finish["rollout_release_lock"] is False
    assert finish["rollout_record"]["outcome"] == "refused"
    assert "live: renewed 5 s ago" in finish["rollout_record"]["failure"]


def test_a_deploy_refused_by_a_stale_lease_says_stale_and_names_take_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer = {"acquired": False, **lease_answer(renewed=75.0, stale=True)}
    error, _ = begin_refused(monkeypatch, answer)
    message = str(error)
    assert "held by ada@ctl" in message
    assert "STALE: not renewed for 75 s (stale after 60 s)" in message
    assert "deploykit deploy --take-over" in message


def test_take_over_of_a_live_lease_is_refused_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    error, _ = begin_refused(monkeypatch, {"acquired": False, **lease_answer()}, take_over=True)
    assert "--take-over takes over a stale lease only, never a live one" in str(error)


def test_a_take_over_is_logged_with_the_old_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    old = lease_answer(renewed=75.0)
    del old["stale"]
    taken = ledger_result({"acquired": True, "holder": {"who": "me"}, "took_over": old})
    runs = FakeRuns({"begin.yml": [taken]})
    lines: list[str] = []
    made = rollouts(monkeypatch, runs, lines)
    monkeypatch.setattr(rollout, "status_from_survey", lambda app, nodes: None)
    made._begin("shop", made._holder("deploy", "r3"), wait=0, take_over=True)
    assert made._renewer is not None
    made._stop_renewing()
    (begin,) = runs.played("begin.yml")
    assert begin["rollout_take_over"] is True
    assert any(
        "took over a stale deploy lock" in line
        and "ada@ctl" in line
        and "not renewed for 75 s (stale after 60 s)" in line
        for line in lines
    ), lines


@pytest.mark.parametrize("lease", [0.0, 5.0, 19.9, float("nan"), float("inf")])
def test_a_lease_below_the_minimum_is_bad_input(lease: float) -> None:
    with pytest.raises(BadInput, match="at least 20 seconds"):
        rollout.check_lease(lease)


def test_the_lease_in_words() -> None:
    assert rollout.describe_lease({"held": False}) == "free"
    unreadable = rollout.describe_lease(
        {"held": True, "holder": {"unreadable": "deploy.lock: bad"}, "renewed": None}
    )
    assert "unreadable" in unreadable and "last renewal unknown" in unreadable


# --- the command line -----------------------------------------------------------------------


def test_lock_status_with_force_is_bad_input_before_any_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["lock", "status", "--force"]) == 2
    assert "--force is for lock release" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["deploy", "--artifact", "missing.tar.gz"], ["rollback"]])
def test_a_rollout_with_too_short_a_lease_exits_2_before_any_host(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*command, "--lease", "5"]) == 2
    err = capsys.readouterr().err
    assert "--lease 5: the deploy lock's lease must be at least 20 seconds" in err


def test_lock_release_of_a_live_lease_exits_1_and_names_force(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[bool] = []

    def release(self: Rollouts, *, force: bool = False) -> dict[str, Any]:
        asked.append(force)
        if force:
            return {"released": True, "forced": True, **lease_answer()}
        return {"released": False, "refused": "live", **lease_answer()}

    monkeypatch.setattr(Rollouts, "release_lock", release)
    assert cli.main(["lock", "release"]) == 1
    err = capsys.readouterr().err
    assert "not released" in err and "live: renewed 5 s ago" in err and "--force" in err
    assert cli.main(["lock", "release", "--force"]) == 0
    assert "released (forced: it was held by ada@ctl" in capsys.readouterr().out
    assert asked == [False, True]


def test_lock_release_json_exits_1_when_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        Rollouts,
        "release_lock",
        lambda self, force=False: {"released": False, "refused": "live", **lease_answer()},
    )
    assert cli.main(["lock", "release", "--json"]) == 1
    assert '"refused": "live"' in capsys.readouterr().out


def test_lock_status_says_stale_with_its_figures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = {"held": True, **lease_answer(renewed=75.0, stale=True)}
    monkeypatch.setattr(Rollouts, "ledger", lambda self, *argv: stale)
    assert cli.main(["lock", "status"]) == 0
    assert "STALE: not renewed for 75 s (stale after 60 s)" in capsys.readouterr().out


# --- through the real playbook and module, on localhost ---------------------------------------


def test_renew_and_release_go_through_ledger_yml_and_the_module(tmp_path: Path) -> None:
    """ledger.yml passes the token, force and who to the module; renewal runs are kept apart."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "playbooks").symlink_to(ROOT / "playbooks")
    directory = tmp_path / "ledger"
    directory.mkdir()
    inventory = project / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    lb:\n      hosts:\n        localhost:\n"
        "          ansible_connection: local\n"
        "          ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
        "          ansible_become: false\n"
        f"          ledger_dir: {directory}\n"
    )
    made = Rollouts(project, inventory, log=print, lease=20)
    ledger.lock_acquire(str(directory), {"who": "ada@ctl", "token": "t1", "lease": 20})
    old = time.time() - 15
    os.utime(directory / "deploy.lock", (old, old))
    answer = made._renew("t1")
    assert answer["extended"] is True and answer["renewed"] < 5
    runs = project / ".cache" / "runs"
    assert [p.parent for p in runs.rglob("artifacts")] and all(
        p.parent.parent == runs / "lease" for p in runs.rglob("artifacts")
    )
    released = (
        made._run("ledger.yml", {"rollout_ledger": {"command": "lock release", "who": "carol@ctl"}})
        .results_of("ledger")[-1]
        .res["ledger"]
    )
    assert (released["released"], released["refused"]) == (False, "live")
    released = (
        made._run(
            "ledger.yml",
            {"rollout_ledger": {"command": "lock release", "who": "carol@ctl", "force": True}},
        )
        .results_of("ledger")[-1]
        .res["ledger"]
    )
    assert (released["released"], released["forced"]) == (True, True)
    (record,) = ledger.history_show(str(directory))["records"]
    assert (record["who"], record["forced"], record["holder"]["who"]) == (
        "carol@ctl",
        True,
        "ada@ctl",
    )


def test_the_history_is_read_from_the_first_balancer_that_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the first balancer unreachable, `deploykit releases` reads the copy of the history
    on the next; the lock (the first balancer's alone) is not read anywhere else."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "playbooks").symlink_to(ROOT / "playbooks")
    copy = tmp_path / "ledger-lb2"
    copy.mkdir()
    ledger.history_append(str(copy), {"action": "deploy", "release": "r2", "outcome": "succeeded"})
    inventory = project / "hosts.yml"
    # lb1: SSH to a closed port on loopback (unreachable at once); lb2: this machine.
    inventory.write_text(
        "all:\n  children:\n    lb:\n      hosts:\n"
        "        lb1:\n          ansible_host: 127.0.0.1\n          ansible_port: 9\n"
        "        lb2:\n          ansible_connection: local\n"
        "          ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
        "          ansible_become: false\n"
        f"          ledger_dir: {copy}\n"
    )
    made = Rollouts(project, inventory, log=print, lease=20)
    layout = rollout.inventory.Layout(
        groups={"lb": ["lb1", "lb2"], "app": []}, app_names=frozenset()
    )
    monkeypatch.setattr(made, "_check_inventory", lambda: layout)
    (record,) = made.ledger("history", "show", "--limit=5")["records"]
    assert (record["action"], record["release"]) == ("deploy", "r2")
    with pytest.raises(DeploykitError, match="could not read the deploy ledger"):
        made.ledger("lock", "status")


# --- the ledger's helper over SSH ---------------------------------------------------------------


class FakeHelper:
    """LedgerOverSsh's ask, recorded: answers ``answer`` (None: it could not be asked)."""

    def __init__(self, answer: Mapping[str, Any] | None, lost: tuple[str, ...] = ()) -> None:
        self.answer, self.lost = answer, lost
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.alone: list[bool] = []

    def ask(
        self, host: str, request: Mapping[str, Any], *, alone: bool = False
    ) -> dict[str, Any] | None:
        self.asked.append((host, dict(request)))
        self.alone.append(alone)
        return None if self.answer is None or host in self.lost else dict(self.answer)


def taken_with_dir(made: Rollouts, holder: Mapping[str, Any]) -> None:
    """begin.yml's lock answer as the ledger module gives it: with the ledger's directory."""
    taken = ledger_result({"acquired": True, "holder": dict(holder)})
    res = {**taken.res, "dir": "/var/lib/deploykit-ledger"}
    made._on_lock_event(
        {"event": "runner_on_ok", "event_data": {"resolved_action": taken.action, "res": res}},
        str(holder["token"]),
    )


def test_the_lock_taken_names_the_ledger_the_helper_is_asked_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = rollouts(monkeypatch, FakeRuns(), [])
    made.renew_interval = 60
    holder = made._holder("deploy", "r2")
    taken_with_dir(made, holder)
    over_ssh = made._ledger_ssh
    assert over_ssh is not None and over_ssh.directory == "/var/lib/deploykit-ledger"
    made._stop_renewing()
    # With a vault, the inventory's SSH settings may be encrypted: Ansible is asked.
    made.vault_password_file = Path("/dev/null")
    taken_with_dir(made, holder)
    assert made._ledger_ssh is None
    made._stop_renewing()


def test_renewals_and_the_finish_ask_the_helper_over_ssh_and_run_no_playbook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = FakeRuns()
    lines: list[str] = []
    made = rollouts(monkeypatch, runs, lines)
    made._balancers = ["lb1", "lb2"]
    made.renew_interval = 0.02
    holder = made._holder("deploy", "r2")
    taken_with_dir(made, holder)
    helper = FakeHelper({"extended": True, "appended": True, "released": True})
    made._ledger_ssh = helper  # type: ignore[assignment]
    assert wait_for(lambda: len(helper.asked) >= 2)
    assert helper.asked[0] == ("lb1", {"command": "lock renew", "token": holder["token"]})
    result = RolloutResult(action="deploy", app="shop", release="r2", previous="r1", holder=holder)
    made._finish(result)
    asked = [(host, request["command"]) for host, request in helper.asked]
    assert asked[-2:] == [("lb1", "finish"), ("lb2", "history append")]
    finish = helper.asked[-2][1]
    assert (finish["token"], finish["record"]) == (holder["token"], result.record())
    assert runs.runs == [] and made._renewer is None and made._ledger_ssh is None


def test_a_helper_that_cannot_be_asked_leaves_it_to_the_playbooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = FakeRuns({"ledger.yml": [ledger_result({"extended": True})]})
    made = rollouts(monkeypatch, runs, [])
    made._balancers = ["lb1"]
    made.renew_interval = 0.02
    holder = made._holder("deploy", "r2")
    taken_with_dir(made, holder)
    helper = FakeHelper(None)
    made._ledger_ssh = helper  # type: ignore[assignment]
    assert wait_for(lambda: len(runs.played("ledger.yml")) >= 1)
    made._finish(
        RolloutResult(action="deploy", app="shop", release="r2", previous="r1", holder=holder)
    )
    assert runs.played("finish.yml")[0]["rollout_token"] == holder["token"]
    assert helper.asked and helper.asked[-1][1]["command"] == "finish"


def test_each_copy_of_the_record_is_asked_for_a_lost_balancer_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = FakeRuns()
    lines: list[str] = []
    made = rollouts(monkeypatch, runs, lines)
    made._balancers = ["lb1", "lb2", "lb3"]
    made.renew_interval = 60
    holder = made._holder("deploy", "r2")
    taken_with_dir(made, holder)
    helper = FakeHelper({"appended": True, "released": True}, lost=("lb2",))
    made._ledger_ssh = helper  # type: ignore[assignment]
    made._finish(
        RolloutResult(action="deploy", app="shop", release="r2", previous="r1", holder=holder)
    )
    assert [(h, r["command"]) for h, r in helper.asked] == [
        ("lb1", "finish"), ("lb2", "history append"), ("lb3", "history append"),
    ]  # fmt: skip
    # A copy's failure gives nothing up: the finish and the renewals are the lock's alone.
    assert helper.alone == [False, True, True]
    assert runs.runs == []
    assert any("copy on lb2 misses this record" in line for line in lines), lines
