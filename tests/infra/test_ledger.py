"""Testinfra checks of the ledger role, run by the molecule scenario ``ledger`` on ``ledger-lb``
and ``ledger-lb2`` (both in lb): the helper and the directory as the role leaves them, the lock
and the history used as a rollout uses them (through the installed helper, as root on the
balancer), and the second balancer copying the records of the first that its history misses."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from lab_probes import only_in_scenario, scenario_host
from role_tasks import run_role_tasks

SCENARIO = "ledger"

pytestmark = only_in_scenario(SCENARIO)

BALANCERS = ("ledger-lb", "ledger-lb2")
HELPER = "/usr/local/libexec/deploykit-ledger"
LEDGER_DIR = "/var/lib/deploykit-ledger"


def ledger(host: Any, *args: str) -> tuple[int, dict[str, Any]]:
    command = host.run(" ".join([HELPER, *(f"'{a}'" for a in args)]))
    assert command.rc in (0, 1), command.stderr
    return command.rc, json.loads(command.stdout)


@pytest.fixture(autouse=True)
def free_lock(host: Any) -> Any:
    # --force: the lease a test took is live (a release without it is refused).
    host.run(f"{HELPER} lock release --force --who testinfra")
    yield
    host.run(f"{HELPER} lock release --force --who testinfra")


def test_the_helper_and_the_directory_belong_to_root(host: Any) -> None:
    helper = host.file(HELPER)
    assert (helper.user, helper.group, helper.mode) == ("root", "root", 0o755)
    directory = host.file(LEDGER_DIR)
    assert directory.is_directory
    # The history names who deployed what and when: root only.
    assert (directory.user, directory.group, directory.mode) == ("root", "root", 0o750)


def test_one_holder_at_a_time_and_only_its_token_releases(host: Any) -> None:
    holder = json.dumps({"who": "ada@ctl", "token": "t1", "command": "deploy", "release": "r2"})
    rc, first = ledger(host, "lock", "acquire", "--holder", holder)
    assert (rc, first["acquired"]) == (0, True)
    other = json.dumps({"who": "bob@ctl", "token": "t2"})
    rc, second = ledger(host, "lock", "acquire", "--holder", other)
    assert (rc, second["acquired"], second["holder"]["who"]) == (1, False, "ada@ctl")
    assert ledger(host, "lock", "release", "--token", "t2")[0] == 1
    assert ledger(host, "lock", "status")[1]["held"] is True
    rc, released = ledger(host, "lock", "release", "--token", "t1")
    assert (rc, released["released"]) == (0, True)
    assert host.file(f"{LEDGER_DIR}/deploy.lock").exists is False


def test_the_history_appends_records_in_order(host: Any) -> None:
    before = len(ledger(host, "history", "show")[1]["records"])
    for release in ("r1", "r2"):
        record = json.dumps({"action": "deploy", "to": release, "outcome": "succeeded"})
        assert ledger(host, "history", "append", "--record", record)[0] == 0
    records = ledger(host, "history", "show")[1]["records"]
    assert [r["to"] for r in records[before:]] == ["r1", "r2"]
    assert ledger(host, "history", "show", "--limit", "1")[1]["records"][0]["to"] == "r2"


def test_a_lease_not_renewed_is_stale_and_taken_over_only_then(host: Any) -> None:
    holder = json.dumps({"who": "ada@ctl", "token": "t1", "command": "deploy", "lease": 30})
    assert ledger(host, "lock", "acquire", "--holder", holder)[0] == 0
    other = json.dumps({"who": "bob@ctl", "token": "t2", "command": "deploy"})
    rc, live = ledger(host, "lock", "acquire", "--holder", other, "--take-over")
    assert (rc, live["stale"]) == (1, False)
    assert ledger(host, "lock", "renew", "--token", "t1")[1]["extended"] is True
    # The last renewal 45 s ago: the lock file's mtime, as the ledger reads it.
    assert host.run(f"touch -d '45 seconds ago' {LEDGER_DIR}/deploy.lock").rc == 0
    status = ledger(host, "lock", "status")[1]
    assert (status["stale"], status["stale_after"]) == (True, 30)
    rc, taken = ledger(host, "lock", "acquire", "--holder", other, "--take-over")
    assert (rc, taken["took_over"]["holder"]["who"]) == (0, "ada@ctl")
    record = ledger(host, "history", "show", "--limit", "1")[1]["records"][0]
    assert (record["action"], record["holder"]["who"]) == ("lock take-over", "ada@ctl")


def test_a_balancer_copies_the_history_records_it_misses(host: Any, request: Any) -> None:
    # Each balancer in turn: records appended on the other one only (as while it was away) are
    # copied by the role's next run on it, once each and in order, as the other holds them.
    name = host.backend.get_hostname()
    inventory = request.config.option.ansible_inventory
    peer = scenario_host(request, next(n for n in BALANCERS if n != name))
    marks = [f"copy-{uuid.uuid4().hex[:8]}-{n}" for n in range(3)]
    for mark in marks:
        rc, _ = ledger(peer, "history", "append", "--record", json.dumps({"action": mark}))
        assert rc == 0

    def marked(on: Any) -> list[dict[str, Any]]:
        records = ledger(on, "history", "show")[1]["records"]
        return [r for r in records if r.get("action") in marks]

    assert marked(host) == []
    recaps, output = run_role_tasks(inventory, name, "ledger", "main")
    assert recaps[name]["changed"] == 1, output[-3000:]
    assert marked(host) == marked(peer)
    assert [r["action"] for r in marked(host)] == marks
    recaps, output = run_role_tasks(inventory, name, "ledger", "main")
    assert recaps[name]["changed"] == 0, output[-3000:]
