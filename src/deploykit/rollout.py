"""Rolling deploys: deploy, rollback, status, the deploy history and the deploy lock.

The controller plans and reports; Ansible acts on the hosts (``playbooks/rollout/``), each step
one task carried out by a module of deploykit's collection (deploykit.fleet):

1. ``begin.yml`` takes the deploy lock on the first balancer (ledger) and surveys every node
   (survey: what each runs); the lock is a lease, which a thread of the controller renews
   (:class:`LeaseRenewer`, every lease/4 seconds) from the moment it is taken until ``finish.yml``;
2. ``stage.yml`` (a deploy of a release not yet everywhere) stages the release on every node to
   switch in parallel (stage), configures the nodes for it, and runs its migration once, before
   any clone switches;
3. ``roll.yml`` switches the app clones batch by batch (a deploy's first batch is a canary),
   three steps a clone: drain on every balancer, activate (switch, restart, health gate on the new
   release id), ready on every balancer; then, together, the workers (activate) and the baked
   pages (pages);
4. on any failure, ``roll.yml`` again, returning every host the rollout touched (not only the
   failing batch) to the release it ran before, with a short stop bound for what never became
   ready (``retire.yml`` stops what it started on a host that ran no release before);
5. ``finish.yml`` appends the record to the history and releases the lock, whatever happened.

A deploy runs 2 and 3 as one run (``deploy.yml``: the two imported): a failure while staging stops
it before any clone is drained.

Steps and results come back as data: each module's own return values, read from the run's events
(:attr:`deploykit.runner.RunResult.results`); a step is known by its module (:data:`STEP_OF`), never
by a task's name.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from ansible_collections.deploykit.fleet.plugins.module_utils import converge
from ansible_collections.deploykit.fleet.plugins.module_utils import maintenance as maintenance_mode
from ansible_collections.deploykit.fleet.plugins.module_utils.fleet import (
    NodeStatus,
    StatusReport,
    is_settled,
    settled_everywhere,
    status_from_survey,
)
from ansible_collections.deploykit.fleet.plugins.module_utils.ledger import app_from_history
from ansible_collections.deploykit.fleet.plugins.module_utils.tiers import (
    summarize as summarize_tiers,
)
from deploykit import inventory, runner
from deploykit.errors import BadInput, DeploykitError
from deploykit.hooks import Hooks, environment
from deploykit.ledger_ssh import LedgerOverSsh
from deploykit.release import verify

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_LEASE",
    "MIN_LEASE",
    "ForeignApplication",
    "LeaseRenewer",
    "NodeOutcome",
    "NodeStatus",
    "RolloutFailed",
    "RolloutResult",
    "Rollouts",
    "StatusReport",
    "app_from_history",
    "check_lease",
    "describe_lease",
    "parse_batch",
    "plan_batches",
    "previous_release",
]

#: A quarter of the clones at a time (at least one, never all of them at once): the rest serve.
DEFAULT_BATCH = "25%"
#: The deploy lock's lease, in seconds: a lease not renewed for longer is stale (its controller is
#: presumed dead). The controller renews it every lease/4 seconds: one call of the ledger's helper
#: over SSH (about 0.2 s), or a short run of ledger.yml (2-4 s) when the helper cannot be asked.
DEFAULT_LEASE = 60.0
#: The shortest lease a rollout may state: four renewals a lease, each taking seconds, must fit.
MIN_LEASE = 20.0

_BATCH = re.compile(r"^(?:(?P<count>[1-9]\d*)|(?P<percent>[1-9]\d?|100)%)$")

Log = Callable[[str], None]
Step = Callable[[Mapping[str, Any]], None]


def unreachable_hint(hosts: Sequence[str], command: str) -> str | None:
    """How to go on when hosts do not answer: a rollout changes every node of the inventory
    (each balancer drains and readies every clone), so it never starts without one."""
    if not hosts:
        return None
    names = ", ".join(hosts)
    return (
        f"{names} did not answer over SSH. If that is for a while or for good, take {names} out "
        f"of the inventory (a balancer's peers keep the floating address) and run deploykit "
        f"{command} again; once back in the inventory, `deploykit provision` and the same "
        f"deploykit {command} bring it in line with the others (configuration, pages, release)"
    )


class RolloutFailed(DeploykitError):
    """A rollout refused before anything changed (the lock is held, no release to return to, a
    release not kept on every node). Exit code 1; a rollout that ran reports in its result."""

    exit_code = 1


class HookRefused(RolloutFailed):
    """The pre-deploy hook failed or ran out of time: the rollout was refused before anything
    changed (exit 1; the history records the refusal)."""


class ForeignApplication(RolloutFailed):
    """The fleet serves another application: refused before anything changed (exit 2, bad input:
    the wrong artifact or the wrong inventory)."""

    exit_code = 2


# --- batches ----------------------------------------------------------------------------------


def check_lease(lease: float) -> float:
    """The lease, in seconds, or BadInput (before any host is contacted)."""
    if not math.isfinite(lease) or lease < MIN_LEASE:
        raise BadInput(
            f"--lease {lease:g}: the deploy lock's lease must be at least {MIN_LEASE:.0f} seconds "
            f"(default {DEFAULT_LEASE:.0f}): the controller renews it every lease/4 seconds"
        )
    return float(lease)


def parse_batch(text: str) -> tuple[int | None, int | None]:
    """``"2"`` → (2, None); ``"25%"`` → (None, 25). Anything else is BadInput."""
    match = _BATCH.match(text.strip())
    if match is None:
        raise BadInput(
            f"--batch {text!r}: expected a number of clones (e.g. 2) or a percentage "
            "(1%-100%, e.g. 25%)"
        )
    if match["count"]:
        return int(match["count"]), None
    return None, int(match["percent"])


def plan_batches(hosts: Sequence[str], batch: str, *, canary: bool = True) -> list[list[str]]:
    """Split ``hosts`` (in inventory order) into the batches a rollout switches, in order: a canary
    of one clone first (unless ``canary`` is false), then batches of ``batch`` clones (a count or a
    percentage of all clones, rounded up, at least 1). With more than one clone, a batch never takes
    every clone at once: one keeps serving while the others switch."""
    count, percent = parse_batch(batch)
    hosts = list(hosts)
    if not hosts:
        return []
    size = count if count is not None else math.ceil(len(hosts) * (percent or 0) / 100)
    size = max(1, size)
    if len(hosts) > 1:
        size = min(size, len(hosts) - 1)
    batches: list[list[str]] = []
    rest = hosts
    if canary and len(hosts) > 1:
        batches.append(rest[:1])
        rest = rest[1:]
    batches.extend(rest[i : i + size] for i in range(0, len(rest), size))
    return batches


def lacking(status: StatusReport, release: str) -> list[str]:
    """The app clones and workers whose survey lists no kept ``release``: the stage sends them
    the artifact without asking first (one module run fewer each). A balancer's kept releases
    are not surveyed: it is asked."""
    return sorted(
        {n.host for n in status.nodes if n.role in ("app", "worker") and release not in n.releases}
    )


def previous_release(
    live: str, history: Sequence[Mapping[str, Any]], kept: Sequence[str]
) -> str | None:
    """The release before ``live``: the ``from`` of the newest successful rollout that made ``live``
    live (the history on the balancer), else the release installed just before it among those the
    nodes keep (their install stamps, oldest first), else None."""
    for record in reversed(history):
        made_live = record.get("outcome") == "succeeded" and record.get("to") == live
        if made_live and record.get("from") and record["from"] != live:
            return str(record["from"])
    if live in kept:
        index = list(kept).index(live)
        if index > 0:
            return kept[index - 1]
    return None


# --- results --------------------------------------------------------------------------------------


@dataclass
class NodeOutcome:
    host: str
    role: str
    before: str | None
    target: str | None
    #: switched, unchanged, untouched, rolled_back, or failed (left out of service or on the wrong
    #: release)
    outcome: str = "untouched"
    step: str | None = None
    message: str | None = None
    #: Seconds each step took on this node (stage, drain, switch, ready, pages; "return ..." for
    #: the steps of a return after a failure).
    seconds: dict[str, float] = field(default_factory=dict)
    #: The failed unit's last journal lines (bounded), oldest first: the cause, as it said it.
    journal: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "before": self.before,
            "target": self.target,
            "outcome": self.outcome,
            "step": self.step,
            "message": self.message,
            "seconds": dict(self.seconds),
            "journal": list(self.journal),
        }


@dataclass
class RolloutResult:
    action: str  # deploy, rollback
    app: str
    release: str
    previous: str | None
    outcome: str = "failed"  # succeeded, unchanged, rolled_back, failed, refused
    seconds: float = 0.0
    batches: list[list[str]] = field(default_factory=list)
    nodes: dict[str, NodeOutcome] = field(default_factory=dict)
    failure: str | None = None
    holder: dict[str, Any] = field(default_factory=dict)
    #: deploy --replace: the application this rollout replaces on the fleet (None: a plain one),
    #: and its release there.
    replaced: str | None = None
    replaced_release: str | None = None
    #: The canary's soak on live traffic (module_utils/soak.py's report), when there was one.
    canary: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("succeeded", "unchanged")

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.action,
            "outcome": self.outcome,
            "app": self.app,
            "release": self.release,
            "previous": self.previous,
            "replaced": self.replaced,
            "replaced_release": self.replaced_release,
            "seconds": round(self.seconds, 1),
            "batches": self.batches,
            "failure": self.failure,
            "canary": self.canary,
            "nodes": {key: node.to_dict() for key, node in sorted(self.nodes.items())},
        }

    def record(self) -> dict[str, Any]:
        """The history's record: who, when (the ledger adds it), from and to, each node's
        outcome."""
        return {
            "action": self.action,
            "app": self.app,
            **(
                {"replaced": self.replaced, "replaced_release": self.replaced_release}
                if self.replaced
                else {}
            ),
            "from": self.previous,
            "to": self.release,
            "outcome": self.outcome,
            "who": self.holder.get("who"),
            "started": self.holder.get("started"),
            "seconds": round(self.seconds, 1),
            "failure": self.failure,
            **({"canary": self.canary} if self.canary else {}),
            "nodes": {
                key: {
                    "outcome": n.outcome,
                    "step": n.step,
                    "seconds": dict(n.seconds),
                    **({"message": n.message[:MESSAGE_CHARS]} if n.message else {}),
                    **({"journal": n.journal[-JOURNAL_LINES:]} if n.journal else {}),
                }
                for key, n in sorted(self.nodes.items())
            },
        }


# --- the driver ---------------------------------------------------------------------------------


def _targets(result: RolloutResult, status: StatusReport) -> dict[str, str]:
    """{host: release} for every node not already running result.release in service; records
    every node's outcome (unchanged for those left alone) in result.nodes."""
    targets: dict[str, str] = {}
    for node in status.nodes:
        outcome = NodeOutcome(
            host=node.host, role=node.role, before=node.release, target=result.release
        )
        result.nodes[f"{node.host}/{node.role}"] = outcome
        if is_settled(node, result.release):
            outcome.outcome = "unchanged"
        else:
            targets[node.host] = result.release
    return targets


def _pages(result: RolloutResult, targets: Mapping[str, str]) -> bool:
    """Whether a balancer's pages switch in this run."""
    balancers = {n.host for n in result.nodes.values() if n.role == "lb"}
    return bool(balancers & set(targets))


def _one(releases: set[str]) -> str:
    """The one release of a set, or "mixed releases"."""
    return next(iter(releases)) if len(releases) == 1 else "mixed releases"


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


#: The rollout step each module of deploykit.fleet carries out (a task's module is its step).
STEP_OF: dict[str, str] = {
    f"{runner.FLEET}.ledger": "lock",
    f"{runner.FLEET}.survey": "survey",
    f"{runner.FLEET}.tier_state": "tiers",
    f"{runner.FLEET}.stage": "stage",
    f"{runner.FLEET}.drain": "drain",
    f"{runner.FLEET}.activate": "switch",
    f"{runner.FLEET}.ready": "ready",
    f"{runner.FLEET}.soak": "soak",
    f"{runner.FLEET}.pages": "pages",
    f"{runner.FLEET}.maintenance": "maintenance",
}
#: What the history keeps of a failed node: its message, and its unit's last journal lines.
# What a node's configuration for a release (playbooks/rollout/tasks/configure.yml) is made of
# besides the inventory and the release's contract: the roles and tasks it runs, the files they
# write. Their digest is part of the configuration's fingerprint (stage.yml): a node whose last
# configuration has the same fingerprint is not configured again.
CONFIGURATION_CODE = (
    "roles/app",
    "roles/worker",
    "roles/static",
    "roles/bake",
    "roles/release",
    "roles/common",
    "playbooks/rollout/tasks",
    "playbooks/rollout/vars",
)


def configuration_code_digest(root: Path) -> str:
    """sha256 over the names and contents of every file of CONFIGURATION_CODE under ``root``
    (links followed: the release helper is the collection's module_utils file)."""
    return converge.tree_digest([root / top for top in CONFIGURATION_CODE], base=root)


MESSAGE_CHARS = 1000
JOURNAL_LINES = 15
#: The steps of roll.yml, in the order a node goes through them.
ROLL_STEPS = ("drain", "switch", "ready", "soak", "pages")
#: The steps each role's switch goes through (a host's durations are recorded for these).
_ROLE_STEPS = {"app": frozenset({"drain", "switch", "ready", "soak"}),
               "worker": frozenset({"switch"}),
               "lb": frozenset({"pages"})}  # fmt: skip
#: Steps that run on some hosts only (the canary's soak): shown once they ran, not as they start on
#: every host (Ansible starts the task everywhere, then skips it where its condition is false).
_SOME_HOSTS_STEPS = frozenset({"soak"})
#: The stop bound, in seconds, of what runs on a clone being returned after a failure: it serves
#: nothing (drained, or never ready), so it is not given its full graceful timeout. A release that
#: works stops within it (gunicorn with nothing in flight: about 0.5 s on the lab); one that hung
#: ignores SIGTERM and is killed at it.
RETURN_STOP_TIMEOUT = 2
#: The stop bound of a clone whose switch failed (its new release never passed the health gate):
#: that release never served a request and has no request to finish, and one that hangs ignores
#: SIGTERM (gunicorn's master waits for workers stuck at import): it is killed half a second after
#: SIGTERM, not two.
NEVER_READY_STOP_TIMEOUT = 0.5
#: The last step of a node's switch: a clone is back in service after ready; a worker after
#: switch; a balancer after pages.
_LAST_STEP = {"app": "ready", "worker": "switch", "lb": "pages"}


def step_of(data: Mapping[str, Any]) -> str | None:
    """The step of an event's task: its module's, or None for a task that is not a step."""
    return STEP_OF.get(str(data.get("resolved_action") or data.get("task_action") or ""))


class _Tracker:
    """Follows a roll.yml run's events: which hosts it touched, the step each one is at, each
    step's duration per host, and the steps each host completed."""

    def __init__(self, on_step: Step | None, groups: Mapping[str, Sequence[str]]) -> None:
        self.groups = groups
        self.touched: set[str] = set()
        self.unreachable: set[str] = set()
        self.step: dict[str, str] = {}
        self.completed: dict[str, set[str]] = {}
        self.seconds: dict[str, dict[str, float]] = {}
        self._started: dict[tuple[str, str], float] = {}
        self._before: dict[str, str | None] = {}
        self._on_step = on_step

    def _emit(self, host: str, step: str, **more: Any) -> None:
        if self._on_step is not None:
            self._on_step({"event": "step", "host": host, "step": step, **more})

    def __call__(self, event: dict[str, Any]) -> None:
        kind = str(event.get("event", ""))
        data = event.get("event_data") or {}
        host = str(data.get("host") or "")
        step = step_of(data)
        if host and kind in ("runner_on_failed", "runner_on_unreachable"):
            # Inside a step: whatever failed may have changed the host.
            self.touched.add(host)
        if host and kind == "runner_on_unreachable":
            self.unreachable.add(host)
        if not host or step not in ROLL_STEPS or not self._applies(host, step):
            return
        if kind == "runner_on_start":
            self._before[host] = self.step.get(host)
            self.step[host] = step
            self._started[(host, step)] = time.monotonic()
            if step not in _SOME_HOSTS_STEPS:
                self._emit(host, step)
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            self.touched.add(host)
            began = self._started.pop((host, step), None)
            seconds = round(time.monotonic() - began, 2) if began is not None else None
            if seconds is not None:
                self.seconds.setdefault(host, {})[step] = seconds
            if kind == "runner_on_ok":
                self.completed.setdefault(host, set()).add(step)
                self._emit(host, step, status="done", seconds=seconds)
                if any(_LAST_STEP[role] == step for role in self._roles(host)):
                    # The host's switch is complete: back in service on the new release.
                    self._emit(host, "done")
        elif kind == "runner_on_skipped":
            self._skipped(host, step)

    def _skipped(self, host: str, step: str) -> None:
        self._started.pop((host, step), None)
        if step in _SOME_HOSTS_STEPS:
            # Not this host's step: it is still at the one before.
            before = self._before.get(host)
            if before is None:
                self.step.pop(host, None)
            else:
                self.step[host] = before

    def _roles(self, host: str) -> list[str]:
        return [r for r in self.groups.get(host, ()) if r in _ROLE_STEPS]

    def _applies(self, host: str, step: str) -> bool:
        """Whether ``step`` is one of this host's (a task of a play over several groups starts on
        every host, and is skipped where it does not apply)."""
        roles = self._roles(host)
        return not roles or any(step in _ROLE_STEPS[role] for role in roles)

    def done(self, host: str, role: str) -> bool:
        """The host went through the last step of its role's switch."""
        return _LAST_STEP[role] in self.completed.get(host, set())


class Rollouts:
    """Rollouts against one inventory, from the project at ``root``."""

    def __init__(
        self,
        root: Path,
        inventory_path: Path,
        *,
        log: Log,
        on_step: Step | None = None,
        vault_password_file: Path | None = None,
        drain_timeout: float = 30,
        ready_timeout: float = 60,
        health_timeout: float = 30,
        lease: float = DEFAULT_LEASE,
        hooks: Hooks | None = None,
        canary_soak: float | None = None,
    ) -> None:
        self.root = root
        #: The hooks and the notifier around every deploy and rollback (none by default).
        self.hooks = hooks or Hooks()
        self.inventory = inventory_path
        self.log = log
        self.on_step = on_step
        self.vault_password_file = vault_password_file
        self.drain_timeout = drain_timeout
        self.ready_timeout = ready_timeout
        self.health_timeout = health_timeout
        #: Seconds a deploy's canary serves live traffic before it is judged (roll.yml's soak);
        #: None: the inventory's deploykit_canary_soak (default 0: no soak).
        self.canary_soak = canary_soak
        #: The deploy lock's lease (seconds) this controller states and renews every lease/4.
        self.lease = lease
        #: Seconds between renewals; None: a quarter of the lease.
        self.renew_interval: float | None = None
        self._renewer: LeaseRenewer | None = None
        self._groups: dict[str, list[str]] = {}
        #: The balancers, in the inventory's order: the first holds the lock.
        self._balancers: list[str] = []
        #: The ledger's helper over SSH, once begin.yml has taken the lock (it says where the
        #: ledger is); the lease's renewals and the finish ask it (ledger_ssh.py).
        self._ledger_ssh: LedgerOverSsh | None = None

    # -- helpers

    def _check_inventory(self) -> inventory.Layout:
        problems = inventory.validate_inventory(self.inventory, roles_dir=self.root / "roles")
        if problems:
            raise BadInput(
                f"{len(problems)} problem(s) in {self.inventory}: nothing was run\n"
                + "\n".join(str(p) for p in problems)
            )
        layout = inventory.read_layout(self.inventory)
        self._balancers = list(layout.groups.get("lb", []))
        self._groups = {}
        for group, hosts in layout.groups.items():
            for host in hosts:
                self._groups.setdefault(host, []).append(group)
        for group in ("lb", "app"):
            if not layout.groups.get(group):
                raise BadInput(
                    f"the inventory {self.inventory} has no host in the group {group!r}: a rollout "
                    "needs a balancer and at least one app clone"
                )
        return layout

    def _run(
        self, playbook: str, extravars: Mapping[str, Any], *, limit: str | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None, runs_subdir: str | None = None,
    ) -> runner.RunResult:  # fmt: skip
        return runner.run_playbook(
            f"playbooks/rollout/{playbook}",
            root=self.root,
            inventory=self.inventory,
            extravars=dict(extravars),
            limit=limit,
            vault_password_file=self.vault_password_file,
            on_event=on_event,
            runs_subdir=runs_subdir,
        )

    @staticmethod
    def _failure(result: runner.RunResult) -> tuple[str | None, str | None, str]:
        """(host, step, message) of a failed run."""
        if result.failures:
            failure = result.failures[0]
            what = "unreachable" if failure.unreachable else failure.message
            return failure.host, None, f"{failure.task}: {what}"
        return (
            None,
            None,
            result.error or f"ansible-playbook ended {result.status} (rc {result.rc})",
        )

    def _app_name(self, layout: inventory.Layout, given: str | None) -> str:
        """The application: --app-name, else the inventory's deploykit_app_name, else the one the
        deploy history on the balancer names last."""
        named = self._named_app(layout, given)
        if named is not None:
            return named
        records = self.ledger("history", "show", "--limit=50").get("records") or []
        return self._learned_app(app_from_history(records))

    @staticmethod
    def _named_app(layout: inventory.Layout, given: str | None) -> str | None:
        """--app-name, else the inventory's deploykit_app_name; None when neither names one."""
        if given:
            return given
        if len(layout.app_names) > 1:
            raise BadInput(
                f"the inventory names several applications ({', '.join(sorted(layout.app_names))}) "
                "in deploykit_app_name: pass --app-name"
            )
        return next(iter(layout.app_names), None)

    def _app_named_by(self, result: runner.RunResult, layout: inventory.Layout) -> str:
        """The application the history names last in a run that read it on every balancer
        (learn.yml, in status.yml and bake.yml): the first balancer, in the group's order, that
        answered."""
        answers = {
            answer.host: answer.res["ledger"]
            for answer in result.results_of("ledger")
            if answer.ok and isinstance(answer.res.get("ledger"), Mapping)
        }
        first = next((answers[h] for h in layout.groups["lb"] if h in answers), None)
        if first is None:
            _, _, message = self._failure(result)
            raise DeploykitError(f"could not read the deploy ledger: {message}")
        return self._learned_app(first.get("app"))

    @staticmethod
    def _learned_app(served: object) -> str:
        """The application the history names, or BadInput when it names none."""
        if served:
            return str(served)
        raise BadInput(
            "which application? the deploy history on the balancer is empty: deploy one first "
            "(deploykit deploy), set deploykit_app_name in the inventory (group all), or pass "
            "--app-name"
        )

    # -- the lock and the survey

    def _survey(self, result: runner.RunResult) -> dict[str, Any]:
        """{host: {"groups", "app", "worker", "lb", ...}} from the survey steps of a run."""
        nodes: dict[str, Any] = {}
        for answer in result.results_of("survey"):
            report = answer.res.get("report")
            if isinstance(report, Mapping):
                nodes[answer.host] = {"groups": self._groups.get(answer.host, []), **report}
        return nodes

    def _begin(
        self,
        app: str | None,
        holder: Mapping[str, Any],
        *,
        wait: float,
        take_over: bool = False,
        settled_record: Mapping[str, Any] | None = None,
        configuration_code: str = "",
    ) -> tuple[StatusReport, list[dict[str, Any]], bool]:
        """The lock, the history and the survey, in one run: (status, history, finished).
        ``app`` None: the application the history names last, learned in the same run (from
        the lock's own answer; BadInput, the lock released, when the history names none);
        status.app says which.
        ``settled_record``: a deploy's record with nothing to do; when every node already runs
        its release in service, the ledger records it and releases the lock in this same run
        (finished is True), so a deploy with nothing to do takes one run, not two.
        ``configuration_code`` (a deploy's): each node also reports whether its configuration is
        the one this code and inventory make, and a node where it is not is not settled."""
        token = str(holder.get("token", ""))
        extravars: dict[str, Any] = {
            "rollout_holder": dict(holder), "rollout_wait": int(wait),
            "rollout_take_over": take_over,
            **({"rollout_app": app} if app else {"rollout_app_from_history": True}),
        }  # fmt: skip
        if settled_record is not None:
            extravars["rollout_settled_record"] = dict(settled_record)
        if configuration_code:
            extravars["rollout_configuration_code"] = configuration_code
        try:
            result = self._run(
                "begin.yml", extravars, on_event=lambda event: self._on_lock_event(event, token)
            )
        except BaseException:
            self._stop_renewing()
            raise
        locks = [r.res.get("ledger") for r in result.results_of("ledger")]
        histories = [a for a in locks if isinstance(a, Mapping) and "records" in a]
        lock = next((a for a in locks if isinstance(a, Mapping) and "acquired" in a), None)
        if app is None:
            app = self._app_of_lock(lock, histories, token)
        # The history read under the lock, in the lock's own answer.
        history_answer = histories[-1] if histories else {}
        if isinstance(lock, Mapping) and isinstance(lock.get("took_over"), Mapping):
            old = lock["took_over"]
            self.log(
                f"[yellow]took over a stale deploy lock[/yellow]: "
                f"{escape(describe_lease({'held': True, **old, 'stale': True}))}; "
                "recorded in the history"
            )
        if isinstance(lock, Mapping) and not lock.get("acquired"):
            described = describe_lease({"held": True, **lock})
            refused = RolloutResult(
                action=str(holder.get("command")), app=app, release=str(holder.get("release", "")),
                previous=None, outcome="refused", holder=dict(holder),
                failure=f"the deploy lock is {described}",
            )  # fmt: skip
            # Every attempt goes into the history, a refused one too (the lock stays its holder's).
            self._run(
                "finish.yml",
                {
                    "rollout_record": refused.record(),
                    "rollout_token": "",
                    "rollout_release_lock": False,
                },
            )
            command = str(holder.get("command") or "deploy")
            if lock.get("stale"):
                hint = (
                    f"its controller is presumed dead: check that nothing is deploying, then take "
                    f"the lock over: deploykit {command} --take-over ... (it also returns the "
                    "clones that rollout left out of service); or release it: deploykit lock "
                    "release"
                )
            else:
                hint = (
                    f"wait for it (deploykit {command} --wait); a live lease is renewed by its "
                    f"controller: if that controller is dead, its lease turns stale "
                    f"{_age(lock.get('stale_after'))} after its last renewal, and then "
                    f"deploykit {command} --take-over takes it over"
                )
                if take_over:
                    hint = f"--take-over takes over a stale lease only, never a live one: {hint}"
            raise RolloutFailed(f"the deploy lock is {described}; nothing was changed", hint=hint)
        if not result.ok:
            host, _, message = self._failure(result)
            if isinstance(lock, Mapping) and lock.get("acquired"):
                failed = RolloutResult(
                    action=str(holder.get("command")), app=app,
                    release=str(holder.get("release", "")), previous=None, holder=dict(holder),
                    failure=f"{host}: {message}",
                )  # fmt: skip
                self._finish(failed)
            unreachable = [failure.host for failure in result.failures if failure.unreachable]
            raise RolloutFailed(
                f"could not survey the nodes ({host}: {message}); nothing was changed",
                hint=unreachable_hint(unreachable, str(holder.get("command") or "deploy")),
            )
        status = status_from_survey(app, self._survey(result))
        records = history_answer.get("records") if isinstance(history_answer, Mapping) else None
        history = [r for r in records or [] if isinstance(r, dict)]
        finished = any(isinstance(a, Mapping) and a.get("settled") for a in locks)
        if finished:
            self._stop_renewing()
        return status, history, finished

    # -- the lease

    def _on_lock_event(self, event: Mapping[str, Any], token: str) -> None:
        """Start renewing the lease the moment begin.yml reports the lock taken (the survey that
        follows may take a while)."""
        data = event.get("event_data") or {}
        if event.get("event") != "runner_on_ok" or step_of(data) != "lock":
            return
        res = data.get("res")
        answer = res.get("ledger") if isinstance(res, Mapping) else None
        if isinstance(answer, Mapping) and answer.get("acquired") and token:
            directory = res.get("dir") if isinstance(res, Mapping) else None
            self._ledger_ssh = (
                LedgerOverSsh(self.inventory, directory, log=self.log)
                if isinstance(directory, str) and self.vault_password_file is None
                else None
            )
            self._start_renewing(token)

    def _app_of_lock(self, lock: Mapping[str, Any] | None, histories: list[Any], token: str) -> str:
        """The application the lock's answer names (the history's); when it names none, the
        lock taken for it is released (nothing was surveyed, nothing is recorded), then
        BadInput says what is missing."""
        named = histories[0].get("app") if histories else None
        if not named and isinstance(lock, Mapping) and lock.get("acquired"):
            self._release_unused(token)
        return self._learned_app(named)

    def _release_unused(self, token: str) -> None:
        """Release the lock a begin run took for nothing (by its token; nothing recorded): by
        the ledger's helper over SSH, else a run of ledger.yml."""
        self._stop_renewing()
        request = {"command": "lock release", "token": token}
        if self._balancers and self._ask_ledger(self._balancers[0], request) is not None:
            return
        self._run("ledger.yml", {"rollout_ledger": request}, runs_subdir="lease")

    def _start_renewing(self, token: str) -> None:
        self._stop_renewing()
        self._renewer = LeaseRenewer(
            lambda: self._renew(token), lease=self.lease, log=self.log,
            interval=self.renew_interval,
        )  # fmt: skip
        self._renewer.start()

    def _stop_renewing(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.stop()

    def _ask_ledger(self, host: str, request: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The ledger's answer on ``host`` through its helper over SSH; None when it is not
        asked that way (the caller runs a playbook instead)."""
        over_ssh = self._ledger_ssh
        return over_ssh.ask(host, request) if over_ssh is not None else None

    def _renew(self, token: str) -> Mapping[str, Any]:
        """One renewal of the lease: by the ledger's helper over SSH, else a run of ledger.yml
        (its runs are kept apart from the rollout's)."""
        request = {"command": "lock renew", "token": token}
        answer = self._ask_ledger(self._balancers[0], request) if self._balancers else None
        if answer is not None:
            return answer
        result = self._run(
            "ledger.yml", {"rollout_ledger": {"command": "lock renew", "token": token}},
            runs_subdir="lease",
        )  # fmt: skip
        answers = result.results_of("ledger")
        answer = answers[-1].res.get("ledger") if answers else None
        if not result.ok or not isinstance(answer, Mapping):
            _, _, message = self._failure(result)
            raise DeploykitError(message)
        return answer

    def _finish(self, result: RolloutResult) -> None:
        # No renewal starts from here on. One under way is not waited for before the release: the
        # ledger serializes the two and checks the token, so either order leaves the lock free
        # (a renewal after the release extends nothing); it is waited for after the finish run.
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
        record, token = result.record(), str(result.holder.get("token", ""))
        try:
            if self._finish_over_ssh(record, token):
                return
            finished = self._run("finish.yml", {"rollout_record": record, "rollout_token": token})
        finally:
            if renewer is not None:
                renewer.stop()
            self._ledger_ssh = None
        if not finished.ok:
            _, _, message = self._failure(finished)
            self.log(
                f"[red]could not record the rollout or release the deploy lock[/red]: {message}; "
                "check with deploykit lock status"
            )
            return
        # The first balancer's answers come first; the others' are the copies.
        answers = finished.results_of("ledger")
        first = answers[0].host if answers else None
        self._say_missed(
            sorted(
                {f.host for f in finished.failures if f.host and f.host != first}
                | {r.host for r in answers if r.host != first and not r.ok}
            )
        )

    def _say_missed(self, missed: Sequence[str]) -> None:
        """Name the balancers whose copy of the history misses the rollout's record."""
        if missed:
            self.log(
                f"[yellow]the history's copy on {', '.join(missed)} misses this record[/yellow] "
                "(unreachable, or no ledger role yet: deploykit provision)"
            )

    def _finish_over_ssh(self, record: Mapping[str, Any], token: str) -> bool:
        """finish.yml's work by the ledger's helper over SSH: the record and the release on the
        first balancer, then the record's copies on the others. False when the first balancer's
        helper could not be asked (finish.yml does it all then)."""
        first, *others = self._balancers or [""]
        over_ssh = self._ledger_ssh
        request = {"command": "finish", "record": dict(record), "token": token}
        if over_ssh is None or not first or over_ssh.ask(first, request) is None:
            return False
        # Each copy is asked for, whatever became of the one before (a balancer lost).
        copy = {"command": "history append", "record": dict(record)}
        self._say_missed([h for h in others if over_ssh.ask(h, copy, alone=True) is None])
        return True

    def _holder(self, command: str, release: str) -> dict[str, Any]:
        return {
            "who": _who(),
            "command": command,
            "release": release,
            "token": uuid.uuid4().hex,
            "lease": self.lease,
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def _stage_events(self, event: dict[str, Any]) -> None:
        """The stage step's start and end per node, for the display and --json."""
        if self.on_step is None:
            return
        data = event.get("event_data") or {}
        if step_of(data) != "stage" or not data.get("host"):
            return
        kind = str(event.get("event", ""))
        if kind == "runner_on_start":
            self.on_step({"event": "step", "host": data["host"], "step": "stage"})
        elif kind == "runner_on_ok":
            duration = data.get("duration")
            res = data.get("res") or {}
            # configured: the node's configuration was already this one (not configured again).
            self.on_step({"event": "step", "host": data["host"], "step": "stage", "status": "done",
                          "seconds": round(float(duration), 2) if duration else None,
                          "configured": bool(res.get("configured"))})  # fmt: skip

    # -- the switch

    def _roll(
        self,
        result: RolloutResult,
        targets: Mapping[str, str],
        batches: list[list[str]],
        *,
        returning: bool = False,
        canary: str | None = None,
        stage: Mapping[str, Any] | None = None,
        never_ready: Iterable[str] = (),
    ) -> tuple[runner.RunResult, _Tracker]:
        """roll.yml on the targets; with ``stage`` (stage.yml's extra vars), deploy.yml: the
        targets staged first, in the same run (one ansible-playbook start less per deploy).
        ``never_ready``: the clones of a return whose failed release never passed its health
        gate (their stop bound is NEVER_READY_STOP_TIMEOUT)."""
        tracker = _Tracker(self.on_step, self._groups)
        hosts = sorted(targets)
        app, replaced = result.app, result.replaced
        if returning and replaced:
            # The return of a replace: the application it replaced comes back, and ours goes.
            app, replaced = replaced, app
        extravars: dict[str, Any] = {
            "rollout_app": app,
            "rollout_replaced_app": replaced or "",
            "rollout_targets": dict(targets),
            "rollout_batches": [len(b) for b in batches] or [1],
            "rollout_drain_timeout": self.drain_timeout,
            "rollout_ready_timeout": self.ready_timeout,
            "rollout_health_timeout": self.health_timeout,
            "rollout_pages": _pages(result, targets),
        }
        if canary is not None:
            # The canary is soaked on live traffic (when the soak is not 0) before the next batch.
            extravars["rollout_canary"] = canary
            if self.canary_soak is not None:
                extravars["rollout_canary_soak"] = self.canary_soak
        if returning:
            # What runs on a returned clone failed or hung: it gets a short stop, then SIGKILL,
            # not the full graceful timeout (it serves nothing: drained, or never ready).
            extravars["rollout_stop_timeout"] = RETURN_STOP_TIMEOUT
            extravars["rollout_stop_timeouts"] = dict.fromkeys(
                sorted(set(never_ready) & set(targets)), NEVER_READY_STOP_TIMEOUT
            )
        # The app play's batches follow the inventory order of the hosts in the run: the targets.
        if stage is None:
            run = self._run("roll.yml", extravars, limit=",".join(hosts), on_event=tracker)
            return run, tracker

        def on_event(event: dict[str, Any]) -> None:
            self._stage_events(event)
            tracker(event)

        run = self._run(
            "deploy.yml", {**extravars, **stage}, limit=",".join(hosts), on_event=on_event
        )
        return run, tracker

    def _switch(
        self,
        result: RolloutResult,
        status: StatusReport,
        layout: inventory.Layout,
        *,
        batch: str,
        canary: bool,
        before: Mapping[str, str] | None = None,
        stage: Mapping[str, Any] | None = None,
    ) -> None:
        """Switch every node to result.release; on failure, return what was touched. Fills
        result.nodes and result.outcome. ``before``: {"host/role": release} to return to, when
        not the application's own (deploy --replace: the replaced application's). ``stage``:
        stage.yml's extra vars (a deploy): the nodes to switch are staged first, in the same run;
        a failure there changed nothing live and returns nothing."""
        targets = _targets(result, status)
        for key, release in (before or {}).items():
            if key in result.nodes:
                result.nodes[key].before = release
        if not targets:
            result.outcome = "unchanged"
            return
        order = [h for h in layout.groups.get("app", []) if h in targets]
        result.batches = plan_batches(order, batch, canary=canary)
        self.log(
            "batches: " + " → ".join("(" + ", ".join(b) + ")" for b in result.batches)
            if result.batches
            else "no app clone to switch"
        )
        canary_host = result.batches[0][0] if canary and len(order) > 1 else None
        run, tracker = self._roll(result, targets, result.batches, canary=canary_host, stage=stage)
        self._record_steps(result, tracker)
        self._record_stage_seconds(result, run)
        if stage is not None and not run.ok and not tracker.step:
            # No host began a step of the switch: the run stopped while staging.
            self._staging_failed(result, run)
            return
        soaked = [r.res.get("soak") for r in run.results_of("soak")]
        result.canary = next((s for s in soaked if isinstance(s, dict)), None)
        if result.canary is not None:
            self.log(f"canary {canary_host} on live traffic: {describe_soak(result.canary)}")
        if run.ok:
            for outcome in result.nodes.values():
                if tracker.done(outcome.host, outcome.role) and outcome.outcome != "unchanged":
                    outcome.outcome = "switched"
            result.outcome = "succeeded"
            return
        host, step, message = self._failure(run)
        step = tracker.step.get(host or "", step)
        result.failure = f"{host or '?'}: step {step or '?'}: {message}"
        self.log(f"[red]failed[/red] {escape(result.failure)}")
        journal = next(
            (r.res.get("journal") for r in run.results if r.host == host and not r.ok), None
        )
        for outcome in result.nodes.values():
            if outcome.host == host:
                outcome.outcome, outcome.step, outcome.message = "failed", step, message
                if isinstance(journal, list) and step in _ROLE_STEPS[outcome.role]:
                    outcome.journal = [str(line)[:300] for line in journal[-JOURNAL_LINES:]]
        self._return_touched(result, tracker, layout, batch=batch)

    def _staging_failed(self, result: RolloutResult, run: runner.RunResult) -> None:
        """The run stopped while staging (or migrating), before any clone was drained: the node
        that failed is named, every other one is untouched, and nothing is returned."""
        host, _, message = self._failure(run)
        result.failure = f"{host or '?'}: staging: {message}"
        result.outcome = "failed"
        self.log(f"[red]failed[/red] {escape(result.failure)}; nothing live changed")
        for outcome in result.nodes.values():
            if outcome.host == host:
                outcome.outcome, outcome.step, outcome.message = "failed", "stage", message
            elif outcome.outcome != "unchanged":
                outcome.outcome = "untouched"

    @staticmethod
    def _record_stage_seconds(result: RolloutResult, run: runner.RunResult) -> None:
        """Each node's staging time, first among its steps' durations."""
        for staged in run.results_of("stage"):
            for outcome in (o for o in result.nodes.values() if o.host == staged.host):
                if staged.seconds:
                    outcome.seconds = {"stage": round(staged.seconds, 2), **outcome.seconds}

    @staticmethod
    def _record_steps(result: RolloutResult, tracker: _Tracker, prefix: str = "") -> None:
        """Each step's duration per node, into the result (and so the history)."""
        for outcome in result.nodes.values():
            for step, seconds in tracker.seconds.get(outcome.host, {}).items():
                if step in _ROLE_STEPS[outcome.role]:
                    outcome.seconds[prefix + step] = seconds

    def _return_touched(
        self, result: RolloutResult, failed: _Tracker, layout: inventory.Layout, *, batch: str
    ) -> None:
        """Every host the failed run touched goes back to the release it ran before, the failing
        one included, not only its batch. A host that cannot be reached is left as it is: out of
        service when it was drained (the balancers hold it in maint), never half-returned."""
        back: dict[str, str] = {}
        unknown: set[str] = set()
        for outcome in result.nodes.values():
            if outcome.host not in failed.touched or outcome.outcome == "unchanged":
                continue
            if outcome.host in failed.unreachable:
                outcome.outcome = "failed"
                outcome.message = (
                    f"{outcome.message or 'unreachable'}: left as it is (out of service when it "
                    "was drained); once it answers, return it: "
                    f"{self._return_command(outcome, replacing=result)}"
                )
                continue
            if outcome.before is None:
                unknown.add(outcome.host)
            else:
                back[outcome.host] = outcome.before
        self.log("returning to the previous release: " + (", ".join(sorted(back)) or "nothing"))
        if unknown:
            self._retire(result, unknown)
        if not back:
            result.outcome = "failed" if unknown else "rolled_back"
            return
        batches = plan_batches(
            [h for h in layout.groups.get("app", []) if h in back], batch, canary=False
        )
        # A clone that failed its switch never served the release it was switched to.
        never_ready = {
            o.host for o in result.nodes.values() if o.role == "app" and o.step == "switch"
        }
        undo, tracker = self._roll(result, back, batches, returning=True, never_ready=never_ready)
        self._record_steps(result, tracker, prefix="return ")
        for outcome in (o for o in result.nodes.values() if o.host in back):
            returned = tracker.done(outcome.host, outcome.role)
            if returned and outcome.outcome == "failed":
                outcome.message = f"{outcome.message} (returned to {back[outcome.host]})"
            outcome.outcome = "rolled_back" if returned else "failed"
        if undo.ok:
            result.outcome = "rolled_back"
        else:
            _, _, undo_message = self._failure(undo)
            result.outcome = "failed"
            result.failure = (
                f"{result.failure}; the return to the previous release failed too: {undo_message}"
            )

    def _return_command(
        self, outcome: NodeOutcome, *, replacing: RolloutResult | None = None
    ) -> str:
        """The command that puts a node the automatic return could not reach back in service
        (``replacing``: the deploy --replace whose return it missed)."""
        inventory_option = f" -i {self.inventory}"
        if replacing is not None and replacing.replaced and outcome.before:
            return (
                f"deploykit deploy{inventory_option} --replace {replacing.app} --artifact "
                f"<the artifact of {outcome.before}>"
            )
        if outcome.before:
            return f"deploykit rollback{inventory_option} --to {outcome.before}"
        return f"deploykit deploy{inventory_option} --artifact <a release of the app that works>"

    def _retire(self, result: RolloutResult, hosts: set[str]) -> None:
        """The nodes that ran no release of the application before: what the failed rollout
        started there is stopped and disabled (nothing left running or restarting); a clone stays
        out of service (it has nothing to serve)."""
        self.log(
            f"[yellow]no previous release of {result.app} on {', '.join(sorted(hosts))}[/yellow]: "
            "stopping and disabling what this rollout started there"
        )
        run = self._run(
            "retire.yml",
            {"rollout_app": result.app, "rollout_stop_timeout": RETURN_STOP_TIMEOUT},
            limit=",".join(sorted(hosts)),
        )
        stopped = {r.host for r in run.results_of("activate") if r.ok}
        for outcome in result.nodes.values():
            if outcome.host not in hosts:
                continue
            outcome.outcome = "failed"
            if outcome.host in stopped and outcome.host not in run.failed_hosts:
                note = (
                    f"ran no release of {result.app} before: its units are stopped and disabled; "
                    "out of service until a release of it succeeds there "
                    f"({self._return_command(outcome)})"
                )
            else:
                note = (
                    f"ran no release of {result.app} before, and its units could not be stopped: "
                    f"systemctl disable --now {result.app}-web.service and each "
                    f"{result.app}-worker@<release>.service (systemctl list-units "
                    f"'{result.app}-worker@*')"
                )
            outcome.message = f"{outcome.message}; {note}" if outcome.message else note

    # -- the commands

    # -- hooks and the notifier

    def _pre_hook(self, result: RolloutResult, status: StatusReport) -> None:
        """The pre-deploy hook, with the lock held and the nodes surveyed: a failure refuses."""
        if not self.hooks.has("pre-deploy"):
            return
        summary = {
            **result.to_dict(),
            "nodes": {f"{n.host}/{n.role}": {"role": n.role, "before": n.release}
                      for n in status.nodes},
        }  # fmt: skip
        ran = self.hooks.run("pre-deploy", environment(summary, "pre-deploy", self.inventory))
        if ran is None:
            return
        if not ran.ok:
            message = f"{ran.describe(self.hooks.timeout)}; nothing was changed"
            result.outcome, result.failure = "refused", message
            raise HookRefused(message)
        self.log(f"pre-deploy hook: exited 0 after {ran.seconds:.1f} s")

    def _after(self, result: RolloutResult) -> None:
        """The hook for the outcome, then the notification; neither changes the outcome."""
        try:
            summary = result.to_dict()
            if result.outcome in ("failed", "rolled_back"):
                name: str | None = "on-failure"
            elif result.ok:
                name = "post-deploy" if result.action == "deploy" else "post-rollback"
            else:
                name = None  # refused: nothing was done to report on
            ran = (
                self.hooks.run(
                    name, environment(summary, name, self.inventory), json.dumps(summary)
                )
                if name
                else None
            )
            if ran is not None and ran.ok:
                self.log(f"{ran.name} hook: exited 0 after {ran.seconds:.1f} s")
            elif ran is not None:
                self.log(
                    f"[yellow]{escape(ran.describe(self.hooks.timeout))}[/yellow] (the "
                    f"{result.action}'s outcome stands)"
                )
            if self.hooks.notify_url is not None:
                failure = self.hooks.notify(summary)
                if failure is None:
                    self.log("notified the receiver of the summary")
                else:
                    self.log(
                        f"[yellow]the notification failed: {escape(failure)}[/yellow] (the "
                        f"{result.action}'s outcome stands)"
                    )
        except Exception as error:  # never fails the rollout
            self.log(f"[yellow]hooks: {escape(type(error).__name__)}: {escape(str(error))}[/]")

    def deploy(
        self,
        artifact: Path,
        *,
        batch: str = DEFAULT_BATCH,
        canary: bool = True,
        wait: float = 0,
        take_over: bool = False,
        replace: str | None = None,
    ) -> RolloutResult:
        """Deploy ARTIFACT. ``replace``: the application the fleet serves, which this one
        replaces through the same drained, health-gated switch (and comes back on failure)."""
        parse_batch(batch)
        check_lease(self.lease)
        layout = self._check_inventory()
        manifest = verify(artifact)
        app = str(manifest["name"])
        release = str(manifest["release_id"])
        if replace is not None and replace == app:
            raise BadInput(
                f"--replace {replace}: that is the application being deployed; --replace names "
                "the other one, which the fleet serves now"
            )
        holder = self._holder("deploy", release)
        started = time.monotonic()
        # Nothing to do is decided and recorded in the first run, unless something must run
        # between the survey and that decision (the pre-deploy hook, a replace's checks).
        settled_record = None
        if replace is None and not self.hooks.has("pre-deploy"):
            settled_record = RolloutResult(
                action="deploy", app=app, release=release, previous=release,
                outcome="unchanged", holder=holder,
            ).record()  # fmt: skip
        configuration_code = configuration_code_digest(self.root)
        status, _, finished = self._begin(
            app,
            holder,
            wait=wait,
            take_over=take_over,
            settled_record=settled_record,
            configuration_code=configuration_code,
        )
        result = RolloutResult(
            action="deploy", app=app, release=release, previous=status.live, holder=holder
        )
        if finished:
            self._unchanged(result, status)
            result.seconds = time.monotonic() - started
            self._after(result)
            return result
        before: dict[str, str] = {}
        try:
            contract = manifest.get("contract") or {}
            self._refuse_foreign(result, status, replace=replace, contract=contract)
            self._pre_hook(result, status)
            if result.replaced:
                before = self._replaced_releases(result.replaced)
                result.replaced_release = _one(set(before.values()))
            if settled_everywhere(status, release):
                self._unchanged(result, status)
                return result
            self.log(f"staging {release} on every node to switch, then switching them")
            live = sorted({n.current for n in status.of("app") if n.current})
            stage = {
                "rollout_artifact": str(artifact.resolve()),
                "rollout_upload_to": lacking(status, release),
                "rollout_live_releases": live,
                "rollout_configuration_code": configuration_code,
            }
            self._switch(
                result, status, layout, batch=batch, canary=canary, before=before, stage=stage
            )
            return result
        finally:
            result.seconds = time.monotonic() - started
            self._finish(result)
            self._after(result)

    def _unchanged(self, result: RolloutResult, status: StatusReport) -> None:
        """A deploy of the release every node runs in service: nothing to do."""
        for node in status.nodes:
            result.nodes[f"{node.host}/{node.role}"] = NodeOutcome(
                host=node.host, role=node.role, before=result.release, target=result.release,
                outcome="unchanged",
            )  # fmt: skip
        result.outcome = "unchanged"
        self.log(f"release {result.release} is live on every node: nothing to do")

    def _refuse_foreign(
        self,
        result: RolloutResult,
        status: StatusReport,
        *,
        replace: str | None = None,
        contract: Mapping[str, Any] | None = None,
    ) -> None:
        """A fleet serves one application: deploying another one onto clones that serve the
        first would take its port (and leave its units fighting over it). ``replace`` names the
        one a deploy --replace moves the fleet away from: that one, and only it, may be served;
        HAProxy's check path must then be one the new application declares (``contract``), since
        the balancers check both applications' clones during the move."""
        app, release = result.app, result.release
        foreign = status.foreign
        others = {name: units for name, units in foreign.items() if name != replace}
        if others:
            where = "; ".join(
                f"{unit} on {', '.join(hosts)}"
                for units in others.values()
                for unit, hosts in units.items()
            )
            names = ", ".join(others)
            if replace is None:
                hint = (
                    f"deploy {app} with an inventory of its own (deploykit deploy -i ...), deploy "
                    f"a release of {names} here, or move this fleet to {app} with "
                    f"deploykit deploy --replace {names} (a drained, health-gated switch, "
                    f"returned to {names} on failure)"
                )
            else:
                hint = f"name the application the fleet serves: --replace {names}"
            refusal = ForeignApplication(
                f"the fleet serves {names}, not {app} ({where}): deploying {release} would take "
                "its place on the clones; nothing was changed",
                hint=hint,
            )
            result.outcome, result.failure = "refused", refusal.message
            raise refusal
        check_paths = sorted({n.check_path for n in status.of("lb") if n.check_path})
        declared = [
            str(path)
            for path in ((contract or {}).get("live_path"), (contract or {}).get("health_path"))
            if path
        ]
        if replace is not None and replace in foreign:
            unanswered = [path for path in check_paths if path not in declared]
            if unanswered:
                refusal = ForeignApplication(
                    f"HAProxy checks the clones on {', '.join(unanswered)}, which {app} does not "
                    f"declare (its live_path or health_path: {', '.join(declared) or 'none'}): "
                    f"its clones would never come into service, and while {replace} and {app} "
                    "share the fleet the check must suit both; nothing was changed",
                    hint=f"declare live_path in {app}'s [tool.deploykit], or set "
                    "haproxy_backend_health_path to a path both applications answer and "
                    "converge the balancers (deploykit provision --tags lb), then replace",
                )
                result.outcome, result.failure = "refused", refusal.message
                raise refusal
            result.replaced = replace
            self.log(
                f"replacing {replace} with {app} on the fleet: each clone is drained, {replace} "
                f"stopped there and {app} started and health-gated; a failure returns every "
                f"touched clone to {replace}"
            )
            return
        if replace is not None:
            self.log(
                f"[yellow]note[/yellow]: no node serves {replace}: --replace has nothing to "
                f"replace; a plain deploy of {app}"
            )
        if not any(n.current for n in status.of("app")) and check_paths:
            if all(path in declared for path in check_paths):
                return
            self.log(
                f"[yellow]note[/yellow]: no clone runs {app} yet, and HAProxy checks the clones on "
                f"{', '.join(check_paths)}: {app} must answer 200 there, or its clones "
                "never come into service (set haproxy_backend_health_path and converge the "
                "balancers)"
            )

    def _replaced_releases(self, app: str) -> dict[str, str]:
        """{"host/role": release} of ``app`` on the nodes that serve it (deploy --replace returns
        them there on failure): the release its service runs, else its current link."""
        report = self._surveyed(app)
        return {
            f"{node.host}/{node.role}": str(node.release or node.current)
            for node in report.nodes
            if node.release or node.current
        }

    def rollback(self, *, to: str | None = None, app_name: str | None = None, wait: float = 0,
                 batch: str = DEFAULT_BATCH, take_over: bool = False) -> RolloutResult:  # fmt: skip
        parse_batch(batch)
        check_lease(self.lease)
        layout = self._check_inventory()
        holder = self._holder("rollback", to or "")
        started = time.monotonic()
        # The application named (--app-name, the inventory), else the one the history names,
        # learned in the begin run itself (no run of its own).
        status, history, _ = self._begin(
            self._named_app(layout, app_name), holder, wait=wait, take_over=take_over
        )
        app, live = status.app, status.live
        result = RolloutResult(
            action="rollback", app=app, release=to or "", previous=live, holder=holder
        )
        try:
            if to is None:
                if live is None:
                    raise RolloutFailed(
                        "the clones do not all run one release (deploykit status shows which): "
                        "say which release to return to with --to",
                    )
                kept = next((n.releases for n in status.of("app") if n.releases), [])
                to = previous_release(live, history, kept)
                if to is None:
                    raise RolloutFailed(
                        f"no release before {live} is known (history) or kept on the clones: "
                        "name one with --to (deploykit releases --json lists them whole)"
                    )
            result.release = to
            self._refuse_foreign(result, status)
            missing = [
                n.host for n in status.nodes if n.role in ("app", "worker") and to not in n.releases
            ]
            if missing:
                raise RolloutFailed(
                    f"release {to} is not kept on {', '.join(missing)}: nothing was changed",
                    hint="deploy its artifact instead (deploykit deploy --artifact ...)",
                )
            self._pre_hook(result, status)
            self.log(f"rolling back {app} from {live or 'mixed releases'} to {to}")
            self._switch(result, status, layout, batch=batch, canary=False)
            return result
        except RolloutFailed as error:
            result.failure = str(error)
            if result.outcome != "refused":
                result.outcome = "failed"
            raise
        finally:
            result.seconds = time.monotonic() - started
            self._finish(result)
            self._after(result)

    def application(self, app_name: str | None = None) -> str:
        """The application a command acts on: ``app_name``, else the inventory's
        deploykit_app_name, else the one the deploy history names last."""
        return self._app_name(self._check_inventory(), app_name)

    def status(self, *, app_name: str | None = None) -> StatusReport:
        """Every node's survey, and each shared-service tier's state, in one run. Without an
        application named (``app_name``, the inventory's deploykit_app_name), the one the
        history names last, learned in the same run."""
        layout = self._check_inventory()
        return self._surveyed(self._named_app(layout, app_name), tiers=True, layout=layout)

    def _surveyed(
        self, app: str | None, *, tiers: bool = False, layout: inventory.Layout | None = None
    ) -> StatusReport:
        """Every node's survey for ``app`` (status.yml: read-only, no lock); with ``tiers``, each
        shared-service tier's state too. ``app`` None: the application the history names last,
        on the first balancer of ``layout`` that answers (BadInput when it names none)."""
        extravars: dict[str, Any] = {"rollout_tiers": tiers}
        extravars.update({"rollout_app": app} if app else {"rollout_app_from_history": True})
        result = self._run("status.yml", extravars)
        if app is None:
            app = self._app_named_by(result, layout or self._check_inventory())
        nodes = self._survey(result)
        if not result.ok and not nodes:
            _, _, message = self._failure(result)
            raise DeploykitError(f"could not survey the nodes: {message}")
        report = status_from_survey(app, nodes)
        for failure in result.failures:
            report.nodes.append(
                NodeStatus(host=failure.host, role="?", groups=[], problem=failure.message[:300])
            )
        answers = {
            answer.host: answer.res["report"]
            for answer in result.results_of("tier_state")
            if isinstance(answer.res.get("report"), Mapping)
        }
        names = {str(answer.get("address")): host for host, answer in answers.items()}
        report.tiers = summarize_tiers(answers, names)
        return report

    def ledger(self, *argv: str) -> dict[str, Any]:
        """One ledger command, as its command line says it (``"lock", "release"``, ``"history",
        "show", "--limit=20"``, ``--token=...``, ``--force``)."""
        layout = self._check_inventory()
        command: dict[str, Any] = {"command": " ".join(argv[:2])}
        for option in argv[2:]:
            key, has_value, value = option.removeprefix("--").partition("=")
            command[key] = int(value) if key == "limit" else value if has_value else True
        result = self._run("ledger.yml", {"rollout_ledger": command})
        answers = {
            answer.host: answer.res["ledger"]
            for answer in result.results_of("ledger")
            if answer.ok and isinstance(answer.res.get("ledger"), dict)
        }
        # A read of the history asks every balancer (ledger.yml): the first in the group's order
        # that answered, the first balancer when it is up. The lock's commands ask it only.
        read_anywhere = command["command"] == "history show"
        first = next((answers[h] for h in layout.groups["lb"] if h in answers), None)
        if first is None or not (result.ok or read_anywhere):
            _, _, message = self._failure(result)
            raise DeploykitError(f"could not read the deploy ledger: {message}")
        return dict(first)

    def maintenance(
        self, wanted: maintenance_mode.Maintenance | None = None
    ) -> dict[str, dict[str, Any]]:
        """Maintenance mode on every balancer (playbooks/rollout/maintenance.yml): ``wanted`` set
        (its inputs checked before any host is contacted; a change recorded in the history), or
        only reported (None). {balancer: its state now, with "changed"; or {"error": why}}."""
        self._check_inventory()
        extravars: dict[str, Any] = {"rollout_maintenance": {}}
        if wanted is not None:
            extravars["rollout_maintenance"] = {
                "enabled": wanted.enabled, "message": wanted.message, "allow": wanted.allow,
                "retry_after": wanted.retry_after, "pages": wanted.pages,
            }  # fmt: skip
            extravars["rollout_record"] = {
                "action": f"maintenance {'on' if wanted.enabled else 'off'}",
                "who": _who(),
                "outcome": "succeeded",
                **({"message": wanted.message, "allow": wanted.allow} if wanted.enabled else {}),
            }
        result = self._run("maintenance.yml", extravars)
        states: dict[str, dict[str, Any]] = {
            r.host: {**r.res.get("maintenance", {}), "changed": bool(r.res.get("changed"))}
            for r in result.results_of("maintenance")
            if r.ok
        }
        for failure in result.failures:
            states.setdefault(failure.host, {"error": failure.message[:300]})
        if not states:
            _, _, message = self._failure(result)
            raise DeploykitError(f"could not reach the balancers: {message}")
        return dict(sorted(states.items()))

    def bake(
        self, *, now: bool = False, timeout: float = 600, app_name: str | None = None
    ) -> dict[str, Any]:
        """The pages baked from live data on the bake worker (playbooks/rollout/bake.yml): with
        ``now``, a bake first, waited for within ``timeout`` seconds. {"host", "record" (the last
        bake's: outcome, reason, bake_id, release_id, pages, balancers), "next_run", "error"
        (why the bake run now failed, or None)}."""
        layout = self._check_inventory()  # it has a worker: the inventory's rules require one
        workers = layout.groups["worker"]
        app = self._named_app(layout, app_name)
        extravars: dict[str, Any] = {
            "rollout_bake_now": now,
            "rollout_bake_timeout": max(1, math.ceil(timeout)),
        }
        extravars.update({"rollout_app": app} if app else {"rollout_app_from_history": True})
        result = self._run("bake.yml", extravars)
        if app is None:
            self._app_named_by(result, layout)  # BadInput when the history names none
        answers = [r for r in result.results_of("bake") if r.host == workers[0]]
        if answers and (answers[0].ok or "record" in answers[0].res):
            res = answers[0].res
            return {
                "host": workers[0],
                "record": res.get("record") or {},
                "next_run": res.get("next_run") or "",
                "error": None if answers[0].ok else str(res.get("msg", ""))[:MESSAGE_CHARS],
            }
        _, _, message = self._failure(result)
        raise DeploykitError(f"could not reach the bake worker {workers[0]}: {message}")

    def release_lock(self, *, force: bool = False) -> dict[str, Any]:
        """An operator's release of the deploy lock: a stale lease is released, a live one only
        with ``force``; the ledger records either in the history, with who released it. The
        answer carries "released" and, refused, "refused": "live" with the lease's state."""
        return self.ledger("lock", "release", f"--who={_who()}", *(["--force"] if force else []))


def describe_soak(report: Mapping[str, Any]) -> str:
    """The canary's soak in one line: its verdict and both sides' figures."""

    def side(figures: Any) -> str:
        if not isinstance(figures, Mapping) or not figures.get("requests"):
            return "no requests"
        rate, rtime = figures.get("error_rate"), figures.get("rtime_ms")
        return f"{figures['requests']} requests, 5xx {rate:g}%, response {rtime:g} ms"

    line = (
        f"{report.get('verdict')} after {report.get('seconds', 0):g} s: canary "
        f"{side(report.get('canary'))}; old release {side(report.get('old'))}"
    )
    return f"{line} ({report['reason']})" if report.get("reason") else line


def _age(seconds: Any) -> str:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return "?"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def describe_lease(lock: Mapping[str, Any]) -> str:
    """The deploy lock's state in words, with its figures: ``free``, or ``held by WHO (COMMAND
    RELEASE) since SINCE (taken AGE ago), live: renewed N s ago (stale after L s without
    renewal)``, or ``..., STALE: not renewed for N s (stale after L s)``. ``lock`` is the ledger's
    answer (lock status; a refused acquire, with "held" added)."""
    if not lock.get("held"):
        return "free"
    holder = lock.get("holder") or {}
    if "unreadable" in holder:
        what = f"held, but its holder's record is unreadable ({holder['unreadable']})"
    else:
        what = (
            f"held by {holder.get('who', '?')} ({holder.get('command', '?')} "
            f"{holder.get('release') or ''}".rstrip()
            + f") since {holder.get('since', '?')} (taken {_age(lock.get('age'))} ago)"
        )
    stale_after = _age(lock.get("stale_after"))
    if lock.get("renewed") is None:
        return f"{what}, last renewal unknown"
    if lock.get("stale"):
        return (
            f"{what}, STALE: not renewed for {_age(lock.get('renewed'))} "
            f"(stale after {stale_after})"
        )
    return (
        f"{what}, live: renewed {_age(lock.get('renewed'))} ago "
        f"(stale after {stale_after} without renewal)"
    )


class LeaseRenewer:
    """Renews a rollout's lease in a daemon thread, every ``interval`` seconds (default: a quarter
    of the lease), from :meth:`start` until :meth:`stop`.

    ``renew`` is one renewal: it returns the ledger's answer (``{"extended": bool, ...}``) or
    raises. A renewal that fails is logged and retried at the next interval, never fatal: the
    lease stays live for its length after the last renewal that succeeded. A lease that is no
    longer this rollout's (taken over while this controller could not renew it, or released by
    hand) is logged once, loudly, and renewing stops; the rollout's own release is token-checked,
    so it never releases the new holder's lock."""

    def __init__(
        self,
        renew: Callable[[], Mapping[str, Any]],
        *,
        lease: float,
        log: Log,
        interval: float | None = None,
    ) -> None:
        self.lease = lease
        self.interval = lease / 4 if interval is None else interval
        self.log = log
        self.renewals = 0
        self.failures = 0
        #: The ledger's answer when the lease was found to be another holder's (or free).
        self.lost: Mapping[str, Any] | None = None
        self._renew = renew
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="deploykit-lease", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """No renewal starts from now on; one under way ends by itself (its answer is ignored)
        and :meth:`stop` waits for it."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop renewing; a renewal under way is waited for up to ``timeout`` seconds."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.log(
                    f"[yellow]a renewal of the deploy lock's lease still runs after "
                    f"{timeout:.0f} s[/yellow]: left to finish in the background"
                )

    def _loop(self) -> None:
        last_ok = time.monotonic()
        next_at = last_ok + self.interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at = time.monotonic() + self.interval
            try:
                answer = self._renew()
            except Exception as error:  # a renewal that fails is logged, never fatal
                if self._stop.is_set():
                    return
                self.failures += 1
                self.log(
                    f"[yellow]could not renew the deploy lock's lease[/yellow] "
                    f"({escape(str(error))[:300]}); last renewed "
                    f"{time.monotonic() - last_ok:.0f} s ago, stale after {self.lease:.0f} s: "
                    f"trying again in {self.interval:.0f} s"
                )
                continue
            if self._stop.is_set():
                return
            if answer.get("extended"):
                self.renewals += 1
                last_ok = time.monotonic()
                continue
            self.lost = answer
            self.log(
                "[red]the deploy lock is no longer this rollout's[/red]: it is "
                f"{escape(describe_lease(answer))} (this controller could not renew it in time, "
                "and it was taken over or released); the rollout goes on, but another may run "
                "alongside it: check deploykit status once it ends"
            )
            return
