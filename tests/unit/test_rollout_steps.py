"""The rollout's steps are data: each is one task carried out by a module of deploykit.fleet, and
the controller knows a step by its module (rollout.STEP_OF), never by a task's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from deploykit import rollout

ROOT = Path(__file__).resolve().parents[2]
ROLLOUT = ROOT / "playbooks" / "rollout"


def fleet_tasks(playbook: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(play name, module, task) of every deploykit.fleet task of a rollout playbook, in order."""
    found = []
    for play in yaml.safe_load((ROLLOUT / playbook).read_text()):
        for task in play.get("tasks") or []:
            modules = [key for key in task if key.startswith("deploykit.fleet.")]
            found.extend((play.get("name", ""), module, task) for module in modules)
    return found


def test_every_module_the_rollout_uses_is_a_known_step() -> None:
    for playbook in (
        "begin.yml",
        "status.yml",
        "survey.yml",
        "stage.yml",
        "roll.yml",
        "finish.yml",
    ):
        for _, module, _ in fleet_tasks(playbook):
            assert module in rollout.STEP_OF, f"{playbook}: {module} has no step"


def test_a_clone_switches_in_three_tasks_drain_switch_ready_and_a_canary_soaks() -> None:
    clone_play = [t for t in fleet_tasks("roll.yml") if "clones" in t[0]]
    steps = [rollout.STEP_OF[module] for _, module, _ in clone_play]
    assert steps == ["drain", "switch", "ready", "soak"]
    drain, _, ready, soak = (task for _, _, task in clone_play)
    # The soak is the canary's only, and only when it has seconds to last.
    assert soak["when"] == [
        "inventory_hostname == rollout_canary | default('')",
        "rollout_canary_soak_seconds | float > 0",
    ]
    # On every balancer, each one a deadline.
    assert drain["loop"] == ready["loop"] == "{{ groups.lb }}"
    assert (
        "timeout" in drain["deploykit.fleet.drain"] and "timeout" in ready["deploykit.fleet.ready"]
    )


def test_staging_is_one_task_per_node() -> None:
    staging = [t for t in fleet_tasks("stage.yml") if rollout.STEP_OF[t[1]] == "stage"]
    assert len(staging) == 1


def event(kind: str, host: str, action: str, **data: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task_action": action, **data}}


def test_the_tracker_follows_steps_by_module_not_by_task_name() -> None:
    seen: list[dict[str, Any]] = []
    groups = {"app1": ["app"], "lb1": ["lb"], "worker1": ["worker"]}
    tracker = rollout._Tracker(lambda e: seen.append(dict(e)), groups)
    drain, activate = "deploykit.fleet.drain", "deploykit.fleet.activate"
    tracker(event("runner_on_start", "app1", drain, task="Anything at all: named freely"))
    tracker(event("runner_on_ok", "app1", drain, task="Anything at all"))
    tracker(event("runner_on_start", "app1", activate, task="Switch: misleading name"))
    tracker(event("runner_on_failed", "app1", activate))
    # A task of the workers' play starts on a balancer too, and is skipped there: not its step.
    tracker(event("runner_on_start", "lb1", activate))
    tracker(event("runner_on_skipped", "lb1", activate))
    tracker(event("runner_on_start", "app1", "ansible.builtin.assert"))
    assert tracker.step == {"app1": "switch"}
    assert tracker.touched == {"app1"}
    assert tracker.completed == {"app1": {"drain"}}
    assert set(tracker.seconds["app1"]) == {"drain", "switch"}
    assert not tracker.done("app1", "app")
    assert [(e["host"], e["step"], e.get("status")) for e in seen] == [
        ("app1", "drain", None), ("app1", "drain", "done"), ("app1", "switch", None),
    ]  # fmt: skip


def test_a_host_whose_last_step_ends_reports_done() -> None:
    seen: list[dict[str, Any]] = []
    tracker = rollout._Tracker(lambda e: seen.append(dict(e)), {"app1": ["app"], "lb1": ["lb"]})
    for action in ("deploykit.fleet.drain", "deploykit.fleet.activate", "deploykit.fleet.ready"):
        tracker(event("runner_on_start", "app1", action))
        tracker(event("runner_on_ok", "app1", action))
    tracker(event("runner_on_ok", "lb1", "deploykit.fleet.pages"))
    assert tracker.done("app1", "app") and tracker.done("lb1", "lb")
    assert [(e["host"], e["step"]) for e in seen if e["step"] == "done"] == [
        ("app1", "done"), ("lb1", "done"),
    ]  # fmt: skip


def test_a_step_skipped_on_a_host_is_not_shown_or_kept_as_its_step() -> None:
    seen: list[dict[str, Any]] = []
    tracker = rollout._Tracker(lambda e: seen.append(dict(e)), {"app1": ["app"], "app2": ["app"]})
    ready, soak = "deploykit.fleet.ready", "deploykit.fleet.soak"
    for host in ("app1", "app2"):
        tracker(event("runner_on_start", host, ready))
        tracker(event("runner_on_ok", host, ready))
        tracker(event("runner_on_start", host, soak))
    tracker(event("runner_on_skipped", "app2", soak))
    tracker(event("runner_on_failed", "app1", soak))
    assert tracker.step == {"app1": "soak", "app2": "ready"}
    assert "soak" in tracker.seconds["app1"] and "soak" not in tracker.seconds.get("app2", {})
    assert [(e["host"], e["step"]) for e in seen if e["step"] == "soak"] == []


def test_a_deploys_run_stages_then_switches() -> None:
    """deploy.yml is stage.yml's plays, then roll.yml's (one run): no step of its own."""
    plays = yaml.safe_load((ROLLOUT / "deploy.yml").read_text())
    assert [p["ansible.builtin.import_playbook"] for p in plays] == ["stage.yml", "roll.yml"]
