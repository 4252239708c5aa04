#!/usr/bin/python
"""deploykit.fleet.activate: a staged release made live on a node, gated on its health."""

from __future__ import annotations

DOCUMENTATION = r"""
module: activate
short_description: Switch current to a staged release, restart its unit, wait until it is healthy
description:
  - With O(state=retired), only stops (bounded as below) and disables O(unit): what a failed
    rollout started on a node that ran no release of the application before is not left running
    or restarting.
  - Switches C(current) to C(releases/<release_id>) atomically (a new link renamed over the old).
  - First, with O(replaces), retires the units of the application this one replaces on the node
    (bounded stop, disable), so that its port is free (deploykit deploy --replace); the return
    after a failure replaces the other way round.
  - With a template O(unit) (C(name@.service), the worker's), the release runs as its own
    instance (C(name@<release_id>.service)): it starts beside the instances of other releases,
    and only once it is healthy are they disabled and stopped, in the background (their own
    TimeoutStopSec bounds a graceful stop that lets running jobs finish), or with
    O(others_stop_timeout), waited for. A long job on the old release then holds nothing up.
    The release's own instance found still stopping so (a switch back to a release whose worker
    has not finished the jobs it held) is waited for, within O(others_stop_timeout) when given
    (a return), else O(stop_timeout), then killed, and started again. The unit of the template's
    name without an instance (C(name.service), deploykit's single worker before a unit per
    release) is stopped with the other instances, and once disabled its unit file is removed
    (only one deploykit wrote).
  - Restarts the unit when its process does not run the release, or when one of O(files) (its
    settings, its unit) changed since it started; starts it when it is not running; enables it.
    A stop is bounded by O(stop_timeout) seconds of wall clock, then the unit is killed: a release
    that never became ready is not waited on for its full graceful timeout.
  - Then waits until the service is healthy, against one wall-clock deadline of O(health_timeout)
    seconds in all: O(health_url) must answer 200 with C({"release": <release_id>}) (each request
    bounded by the time left, at most 2 s), or O(health_command) must exit 0. A unit that failed,
    or a health path answering only server errors other than 503 for 5 s (a broken release, not
    one warming up), ends the wait early. A failure states the real elapsed time, the last answer and the unit's
    last journal lines.
options:
  app_root: {description: Where the application lives., type: path, required: true}
  release_id: {description: "The release to make live (staged on the node); required unless O(state=retired).", type: str}
  state: {description: "live: the release runs and is healthy; retired: the unit is stopped and disabled.", type: str, choices: [live, retired], default: live}
  unit: {description: The systemd unit that runs it., type: str, required: true}
  files: {description: Files whose change since the process started calls for a restart., type: list, elements: path, default: []}
  health_url: {description: The readiness URL on the node's own address., type: str}
  health_address: {description: "The node's own base URL (http://ADDRESS:PORT): the readiness URL is it and the release's own contract.health_path.", type: str}
  contract_entry: {description: "The contract's entry this unit runs (wsgi, worker): a release that declares none only switches current; its unit is stopped and disabled.", type: str}
  health_command: {description: A command that exits 0 once the service is ready (run as given)., type: list, elements: str}
  health_timeout: {description: The deadline of the health gate in seconds (wall clock)., type: float, default: 30}
  stop_timeout: {description: The longest wait for the old process to stop before it is killed., type: float, default: 40}
  journal_lines: {description: The unit's last journal lines reported on failure., type: int, default: 15}
  replaces: {description: "Units of another application retired (bounded stop, disable) before O(unit) starts.", type: list, elements: str, default: []}
  others_stop_timeout: {description: "With a template O(unit): wait this long for the other instances to stop (then SIGKILL) instead of stopping them in the background.", type: float}
"""

RETURN = r"""
previous: {description: The release current pointed to before (empty on a first deploy)., returned: always, type: str}
switched: {description: Whether current changed., returned: always, type: bool}
restarted: {description: Whether the unit was (re)started., returned: always, type: bool}
killed: {description: Whether the old process had to be killed at the stop deadline., returned: always, type: bool}
retired: {description: "The units of O(replaces) that were running or enabled, now stopped and disabled (with a template O(unit) and O(others_stop_timeout), the other instances too).", returned: always, type: list}
instance: {description: "With a template O(unit): the instance that runs the release.", returned: always, type: str}
stopping: {description: "With a template O(unit): the other instances disabled and stopping in the background.", returned: always, type: list}
removed: {description: "With a template O(unit): the unit file of its plain unit (C(name.service), from before a unit per release) removed, or empty.", returned: always, type: str}
seconds: {description: Seconds per part (switch, stop, start, health)., returned: always, type: dict}
journal: {description: The unit's last journal lines (on failure)., returned: failure, type: list}
"""

import os
import subprocess
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.release import (
    UNIT_DIR,
    ReleaseProblem,
    enabled,
    health,
    instance_unit,
    instances,
    is_template,
    live_release,
    load_manifest,
    running,
    switch_current,
    systemctl_show,
)

POLL_SECONDS = 0.25
#: How long the health path may answer server errors other than 503 ("not ready yet") before the
#: gate ends early: a release that is broken, not one warming up.
BROKEN_SECONDS = 5.0
STOPPED = ("inactive", "failed")
#: A health command (the worker's ping through the broker) is started again every COMMAND_EVERY
#: seconds while earlier runs still wait for their answer, at most COMMAND_IN_FLIGHT at a time: a
#: ping sent before the service was ready is never answered and waits out its own timeout, and the
#: first one sent once it is ready is answered at once. (One run at a time found a restarted
#: Celery worker about a second late: its first ping always went out before the worker was up.
#: Every 0.5 s, the lab's worker answered 1.04 s after its start, every time; every 0.25 s,
#: 0.52-0.81 s; every 0.15 s no sooner: the pings then only compete with its start for the CPU.)
COMMAND_EVERY = 0.25
COMMAND_IN_FLIGHT = 3


class CommandProbe:
    """Runs of a health command, overlapping (see COMMAND_EVERY), until one exits 0."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.running: list[tuple[float, subprocess.Popen, object]] = []
        self.last = "no answer yet"
        self.answered = False

    def poll(self) -> bool:
        """True once a run exited 0; starts another run when one is due."""
        still, ready = [], False
        for started, proc, output in self.running:
            rc = proc.poll()
            if rc is None:
                still.append((started, proc, output))
                continue
            output.seek(0)
            text = output.read().decode("utf-8", "replace").strip()
            output.close()
            self.answered = True
            if not ready:
                self.last = f"rc {rc}: {text[-300:]}"
            ready = ready or rc == 0
        # Every run still waiting stays tracked, those started after the one that answered too:
        # stop() ends them.
        self.running = still
        if ready:
            return True
        newest = max((started for started, _, _ in still), default=None)
        now = time.monotonic()
        if len(still) < COMMAND_IN_FLIGHT and (newest is None or now - newest >= COMMAND_EVERY):
            # Output to a file, not a pipe: a run still in flight when the module exits holds
            # nothing of the module's own (the connection's) streams. Closed by poll or stop.
            output = tempfile.TemporaryFile()  # noqa: SIM115
            proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
            self.running.append((now, proc, output))
        return False

    def stop(self) -> None:
        """The runs still waiting are not waited for: ended (each would end at its own timeout)."""
        for _, proc, output in self.running:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            output.close()
        self.running = []
        if not self.answered:
            self.last = f"{self.argv[0]} did not answer before the deadline"


def systemctl(module: AnsibleModule, *argv: str) -> None:
    rc, out, err = module.run_command(["systemctl", *argv])
    if rc != 0:
        module.fail_json(msg=f"systemctl {' '.join(argv)}: rc {rc}: {(err or out).strip()[-400:]}")


def wait_stopped(unit: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if systemctl_show(unit, "ActiveState").get("ActiveState") in STOPPED:
            return True
        time.sleep(POLL_SECONDS)
    return systemctl_show(unit, "ActiveState").get("ActiveState") in STOPPED


def bounded_stop(module: AnsibleModule, unit: str, timeout: float) -> bool:
    """SIGTERM (the unit's own graceful stop), then SIGKILL at the deadline; True when killed."""
    systemctl(module, "stop", "--no-block", unit)
    if wait_stopped(unit, time.monotonic() + timeout):
        return False
    systemctl(module, "kill", "--signal=SIGKILL", unit)
    wait_stopped(unit, time.monotonic() + 10)
    return True


def retire_unit(module: AnsibleModule, unit: str, timeout: float) -> dict:
    """Stop (bounded) and disable ``unit``, and forget that it failed; what was done."""
    shown = systemctl_show(unit, "ActiveState", "UnitFileState", "LoadState")
    if shown.get("LoadState") in (None, "not-found"):
        return {"changed": False, "killed": False}
    running_now = shown.get("ActiveState") not in STOPPED
    enabled = shown.get("UnitFileState") == "enabled"
    failed = shown.get("ActiveState") == "failed"
    changed = running_now or enabled or failed
    if module.check_mode:
        return {"changed": changed, "killed": False}
    killed = bounded_stop(module, unit, timeout) if running_now else False
    if enabled:
        systemctl(module, "disable", unit)
    # Asked after the stop, not before: a unit caught in a restart loop can end
    # "failed" by the stop itself, and one that ended inactive may be unloaded
    # already (reset-failed then fails with "not loaded"; a failed unit stays loaded).
    if systemctl_show(unit, "ActiveState").get("ActiveState") == "failed":
        systemctl(module, "reset-failed", unit)
    return {"changed": changed, "killed": killed}


def retire(module: AnsibleModule, unit: str, timeout: float) -> None:
    """state=retired: ``unit`` (a template: every instance of it) stopped (bounded) and
    disabled."""
    if not is_template(unit):
        done = retire_unit(module, unit, timeout)
        module.exit_json(unit=unit, state="retired", **done)
    units = instances(unit)
    done = [retire_unit(module, name, timeout) for name in units]
    module.exit_json(
        unit=unit,
        state="retired",
        changed=any(d["changed"] for d in done),
        killed=any(d["killed"] for d in done),
        instances=units,
    )


def plain_unit(template: str) -> str:
    """The unit of the same name without an instance: ``name.service``, what deploykit installed
    before it ran a unit per release."""
    return template.replace("@.service", ".service")


def others_of(template: str, instance: str) -> list[str]:
    """The other instances of ``template``, and its plain unit (see plain_unit) when loaded."""
    plain = plain_unit(template)
    legacy = [plain] if systemctl_show(plain, "LoadState").get("LoadState") == "loaded" else []
    return [name for name in instances(template) if name != instance] + legacy


def removable_plain_unit(template: str, unit_dir: str = UNIT_DIR) -> str:
    """The plain unit's file (see plain_unit) when it goes: deploykit wrote it (its units run
    deploykit-release exec) and it is disabled. The path, or ""."""
    plain = plain_unit(template)
    path = os.path.join(unit_dir, plain)
    try:
        with open(path, encoding="utf-8") as handle:
            written_by_deploykit = "deploykit-release exec" in handle.read()
    except OSError:
        return ""
    return path if written_by_deploykit and not enabled(plain) else ""


def remove_plain_unit(module: AnsibleModule, template: str, unit_dir: str = UNIT_DIR) -> str:
    """The plain unit's file, once it is disabled (see removable_plain_unit), removed, so that
    nothing starts the single worker of earlier versions again (by hand, or at boot through a
    unit that wants it). A unit still stopping is not disturbed by the removal: systemd keeps it
    loaded until its process exits. The path removed, or ""."""
    path = removable_plain_unit(template, unit_dir)
    if path:
        os.remove(path)
        systemctl(module, "daemon-reload")
    return path


def stop_others(module: AnsibleModule, others: list[str], timeout: float | None) -> dict:
    """Disable ``others`` and stop them: waited for (bounded by ``timeout``, then SIGKILL), or
    with no ``timeout`` only asked (systemd carries the stop out, bounded by its TimeoutStopSec).
    {"retired": waited for, "stopping": asked, "disabled": what it disabled, "killed"}."""
    done: dict = {"retired": [], "stopping": [], "disabled": [], "killed": False}
    for name in others:
        if timeout is not None:
            retired = retire_unit(module, name, timeout)
            if retired["changed"]:
                done["retired"].append(name)
                done["killed"] = done["killed"] or retired["killed"]
            continue
        shown = systemctl_show(name, "ActiveState", "UnitFileState")
        if shown.get("UnitFileState") == "enabled":
            systemctl(module, "disable", name)
            done["disabled"].append(name)
        if shown.get("ActiveState") == "failed":
            systemctl(module, "reset-failed", name)
        elif shown.get("ActiveState") not in STOPPED:
            systemctl(module, "stop", "--no-block", name)
            done["stopping"].append(name)
    return done


def journal(unit: str, lines: int, since: float) -> list[str]:
    shown = subprocess.run(
        ["journalctl", f"--unit={unit}", f"--lines={lines}", "--no-pager", "--output=cat",
         f"--since=@{int(since) - 1}"],
        capture_output=True, text=True, check=False, timeout=10,
    )  # fmt: skip
    return [line[:300] for line in shown.stdout.splitlines()[-lines:]]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "path", "required": True},
            "release_id": {"type": "str"},
            "state": {"type": "str", "choices": ["live", "retired"], "default": "live"},
            "unit": {"type": "str", "required": True},
            "files": {"type": "list", "elements": "path", "default": []},
            "health_url": {"type": "str"},
            "health_address": {"type": "str"},
            "contract_entry": {"type": "str"},
            "health_command": {"type": "list", "elements": "str"},
            "health_timeout": {"type": "float", "default": 30},
            "stop_timeout": {"type": "float", "default": 40},
            "journal_lines": {"type": "int", "default": 15},
            "replaces": {"type": "list", "elements": "str", "default": []},
            "others_stop_timeout": {"type": "float"},
        },
        mutually_exclusive=[("health_url", "health_command", "health_address")],
        required_if=[("state", "live", ["release_id"])],
        supports_check_mode=True,
    )
    p = module.params
    unit, release_id = p["unit"], p["release_id"]
    if p["state"] == "retired":
        retire(module, unit, p["stop_timeout"])
    # A template: the release runs as its own instance, beside the other releases' (see above).
    template = unit if is_template(unit) else None
    if template is not None:
        unit = instance_unit(template, release_id)
    release_dir = os.path.join(p["app_root"], "releases", release_id)
    try:
        contract = load_manifest(release_dir).get("contract") or {}
    except ReleaseProblem as error:
        module.fail_json(msg=f"release {release_id} is not staged on this node: {error}")
    if p["health_address"]:
        p["health_url"] = p["health_address"].rstrip("/") + str(contract.get("health_path") or "/")
    seconds: dict[str, float] = {}
    state = running(unit, p["files"])
    # The release's own instance still stopping: an earlier switch away from this release left
    # it finishing its jobs in the background. It takes no new work (it answers no ping) and
    # exits when they are done, so it cannot be this release's worker: it is waited for (a
    # return's short bound, else the graceful one, then SIGKILL) and started again.
    stopping_self = state["active"] == "deactivating"
    must_restart = state["release"] != release_id or bool(state["changed_since"]) or stopping_self
    releases = os.path.join(p["app_root"], "releases")
    previous = live_release(os.path.join(p["app_root"], "current"), releases) or ""
    result = {
        "previous": previous,
        "switched": previous != release_id,
        "restarted": False,
        "killed": False,
        "seconds": seconds,
        "unit": unit,
        "release_id": release_id,
        "retired": [],
        "instance": unit if template else "",
        "stopping": [],
        "removed": "",
    }
    others = others_of(template, unit) if template else []
    replaced = [
        name
        for u in p["replaces"]
        for name in (instances(u) if is_template(u) else [u])
        if name != unit and u != template
    ]
    if module.check_mode:
        result["retired"] = [
            u for u in replaced if retire_unit(module, u, p["stop_timeout"])["changed"]
        ]
        changed = (
            result["switched"] or must_restart or not state["pid"] or result["retired"]
            or any(enabled(o) or systemctl_show(o, "ActiveState").get("ActiveState") not in STOPPED
                   for o in others)
            or (template is not None and removable_plain_unit(template))
        )  # fmt: skip
        module.exit_json(changed=bool(changed), **result)
    # The application this one replaces holds the port (and its worker the queue's consumers):
    # stopped and disabled first. A bounded stop: the clone is drained.
    started = time.monotonic()
    for other in replaced:
        done = retire_unit(module, other, p["stop_timeout"])
        if done["changed"]:
            result["retired"].append(other)
            result["killed"] = result["killed"] or done["killed"]
    if result["retired"]:
        seconds["retire"] = round(time.monotonic() - started, 3)
    if p["contract_entry"] and not contract.get(p["contract_entry"]):
        # Nothing of this release runs here (an application without a worker): current follows
        # the fleet, and a unit an earlier release left is not left running.
        result["previous"], result["switched"] = switch_current(p["app_root"], release_id)
        if state["pid"] or systemctl_show(unit, "UnitFileState").get("UnitFileState") == "enabled":
            systemctl(module, "disable", "--now", unit)
            result["restarted"] = True
        for other in others:
            if retire_unit(module, other, p["stop_timeout"])["changed"]:
                result["retired"].append(other)
        module.exit_json(
            changed=bool(result["switched"] or result["restarted"] or result["retired"]),
            unit_runs=False,
            **result,
        )
    began = time.time()
    started = time.monotonic()
    try:
        result["previous"], result["switched"] = switch_current(p["app_root"], release_id)
    except (OSError, ValueError) as error:
        module.fail_json(msg=f"switch to {release_id}: {error}", **result)
    seconds["switch"] = round(time.monotonic() - started, 3)
    if systemctl_show(unit, "NeedDaemonReload").get("NeedDaemonReload") == "yes":
        systemctl(module, "daemon-reload")
    if must_restart and state["pid"]:
        # A bounded stop: SIGTERM (the unit's graceful stop), then SIGKILL at the deadline.
        started = time.monotonic()
        bound = p["stop_timeout"]
        if stopping_self and p["others_stop_timeout"] is not None:
            bound = p["others_stop_timeout"]
        result["killed"] = bounded_stop(module, unit, bound)
        seconds["stop"] = round(time.monotonic() - started, 3)
    if must_restart or not state["pid"]:
        # --no-block: a start that hangs (a unit that never notifies) is the health gate's to
        # judge, against its deadline, not systemd's start timeout.
        started = time.monotonic()
        if state["active"] == "failed":
            systemctl(module, "reset-failed", unit)
        systemctl(module, "start", "--no-block", unit)
        result["restarted"] = True
        seconds["start"] = round(time.monotonic() - started, 3)
    if template is None and not enabled(unit):
        systemctl(module, "enable", unit)
    restarts = int(systemctl_show(unit, "NRestarts").get("NRestarts") or 0)
    started = time.monotonic()
    deadline = started + p["health_timeout"]
    last = "no answer yet"
    healthy = False
    broken_since: float | None = None
    answer: dict = {}
    probe = CommandProbe(p["health_command"]) if p["health_command"] else None
    while True:
        left = deadline - time.monotonic()
        if p["health_url"]:
            answer = health(p["health_url"], timeout=max(0.2, min(2.0, left)))
            healthy = answer["status"] == 200 and answer["release"] == release_id
            last = (
                f"{answer['status']} {answer.get('body', '')!r}"
                if answer["status"] is not None
                else str(answer.get("error"))
            )
            if answer["status"] == 200 and answer["release"] != release_id:
                last = f"200 reporting release {answer['release']!r}"
        elif probe is not None:
            healthy = probe.poll()
            last = probe.last
        else:
            healthy = systemctl_show(unit, "ActiveState").get("ActiveState") == "active"
            last = "not active"
        if healthy:
            break
        # 503 is "not ready yet" (the contract's answer while warming up): waited on. Another
        # server error, again and again, is a release that is broken, not one still starting.
        status = answer.get("status") if p["health_url"] else None
        erring = isinstance(status, int) and status >= 500 and status != 503
        broken_since = (broken_since or time.monotonic()) if erring else None
        if broken_since is not None and time.monotonic() - broken_since >= BROKEN_SECONDS:
            last = f"{last} (server errors for {BROKEN_SECONDS:g} s: a broken release)"
            break
        shown = systemctl_show(unit, "ActiveState", "NRestarts")
        crashed = (
            shown.get("ActiveState") == "failed" or int(shown.get("NRestarts") or 0) >= restarts + 2
        )
        if crashed or time.monotonic() >= deadline:
            if crashed:
                last = f"{unit} is {shown.get('ActiveState')} after {int(shown.get('NRestarts') or 0) - restarts} restart(s); {last}"
            break
        time.sleep(max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
    if probe is not None:
        probe.stop()
        last = probe.last if not healthy else last
    seconds["health"] = round(time.monotonic() - started, 3)
    if not healthy:
        lines = journal(unit, p["journal_lines"], began)
        what = (
            f"report release {release_id} on {p['health_url']}"
            if p["health_url"]
            else "become ready"
        )
        module.fail_json(
            # One line each (a display keeps the first lines of a message): what, the last
            # answer, the log newest line first.
            msg=f"{unit} did not {what} within {p['health_timeout']:g} s (waited "
            f"{seconds['health']:.1f} s).\nLast answer: {last[:160]}\nIts log: "
            + (" | ".join(reversed(lines)) or "(none)"),
            journal=lines,
            **result,
        )
    touched = False
    if template is not None:
        # Healthy: this instance is the one that starts at boot, and the other releases' stop.
        if not enabled(unit):
            systemctl(module, "enable", unit)
            touched = True
        started = time.monotonic()
        done = stop_others(module, others, p["others_stop_timeout"])
        result["retired"] += done["retired"]
        result["stopping"] = done["stopping"]
        result["killed"] = result["killed"] or done["killed"]
        result["removed"] = remove_plain_unit(module, template)
        touched = touched or bool(done["disabled"]) or bool(result["removed"])
        if others:
            seconds["others"] = round(time.monotonic() - started, 3)
    module.exit_json(
        changed=bool(
            result["switched"]
            or result["restarted"]
            or result["retired"]
            or result["stopping"]
            or touched
        ),
        **result,
    )


if __name__ == "__main__":
    main()
