"""The deploy ledger's helper (roles/ledger/files/deploykit-ledger), run as the balancer runs it,
on a temporary directory: one holder at a time, its own lock released only by its token, the
history kept line by line and readable past a torn last line; the lock is a lease, renewed by its
holder's token, stale once not renewed for its length, released by hand only when stale (or with
--force), taken over only when stale, every operator release and take-over recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.deploykit.fleet.plugins.module_utils import ledger as ledger_module

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "roles" / "ledger" / "files" / "deploykit-ledger"


def ledger(directory: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(HELPER), "--dir", str(directory), *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}


def holder(who: str, token: str, **more: Any) -> str:
    return json.dumps({"who": who, "token": token, "command": "deploy", "release": "r2", **more})


def age_lock(directory: Path, seconds: float) -> None:
    """The lease's last renewal ``seconds`` ago (its lock file's mtime)."""
    lock = directory / "deploy.lock"
    at = time.time() - seconds
    os.utime(lock, (at, at))


def history(directory: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = ledger(directory, "history", "show")[1]["records"]
    return records


FREE = {"held": False, "holder": None, "age": None, "renewed": None, "stale": False,
        "stale_after": None}  # fmt: skip


def test_a_second_holder_is_refused_with_the_first_ones_record(tmp_path: Path) -> None:
    rc, first = ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1"))
    assert (rc, first["acquired"]) == (0, True)
    assert first["holder"]["since"].endswith("Z")
    rc, second = ledger(tmp_path, "lock", "acquire", "--holder", holder("bob@ctl", "t2"))
    assert rc == 1
    assert second["acquired"] is False
    assert second["holder"]["who"] == "ada@ctl"
    assert second["age"] >= 0


def test_only_the_holders_token_releases_the_lock(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1"))
    rc, answer = ledger(tmp_path, "lock", "release", "--token", "someone-else")
    assert (rc, answer["released"]) == (1, False)
    assert ledger(tmp_path, "lock", "status")[1]["held"] is True
    rc, answer = ledger(tmp_path, "lock", "release", "--token", "t1")
    assert (rc, answer["released"]) == (0, True)
    assert ledger(tmp_path, "lock", "status")[1] == FREE


def test_an_operator_release_without_token_clears_a_dead_holders_stale_lease(
    tmp_path: Path,
) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("dead@ctl", "t1", lease=30))
    age_lock(tmp_path, 45)
    rc, answer = ledger(tmp_path, "lock", "release", "--who", "carol@ctl")
    assert (rc, answer["released"], answer["holder"]["who"]) == (0, True, "dead@ctl")
    assert answer["forced"] is False
    assert ledger(tmp_path, "lock", "status")[1] == FREE
    (record,) = history(tmp_path)
    assert (record["action"], record["outcome"], record["who"]) == (
        "lock release", "released", "carol@ctl",
    )  # fmt: skip
    assert record["holder"]["who"] == "dead@ctl" and record["stale"] is True


def test_an_operator_release_of_a_live_lease_is_refused_without_force(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1"))
    rc, answer = ledger(tmp_path, "lock", "release", "--who", "carol@ctl")
    assert (rc, answer["released"], answer["refused"]) == (1, False, "live")
    assert answer["holder"]["who"] == "ada@ctl" and answer["stale"] is False
    assert ledger(tmp_path, "lock", "status")[1]["held"] is True
    assert history(tmp_path) == []


def test_a_forced_release_of_a_live_lease_is_recorded_in_the_history(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1"))
    rc, answer = ledger(tmp_path, "lock", "release", "--force", "--who", "carol@ctl")
    assert (rc, answer["released"], answer["forced"]) == (0, True, True)
    assert ledger(tmp_path, "lock", "status")[1]["held"] is False
    (record,) = history(tmp_path)
    assert record["action"] == "lock release"
    assert (record["outcome"], record["forced"], record["who"]) == ("forced", True, "carol@ctl")
    assert record["holder"]["who"] == "ada@ctl" and record["stale"] is False
    # The token is a capability to release: the history keeps who held the lock, not it.
    assert "token" not in record["holder"]
    assert record["recorded"].endswith("Z")


def test_since_is_when_the_lock_was_taken_not_when_waiting_began(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1"))
    began = time.time()
    timer = threading.Timer(2.5, lambda: ledger(tmp_path, "lock", "release", "--token", "t1"))
    timer.start()
    rc, answer = ledger(
        tmp_path, "lock", "acquire", "--holder", holder("bob@ctl", "t2"), "--wait", "20"
    )
    timer.join()
    assert rc == 0
    since = datetime.fromisoformat(answer["holder"]["since"].replace("Z", "+00:00")).timestamp()
    # "since" has whole seconds: taken at least 2.5 s after the wait began, not when it began.
    assert since >= int(began) + 2, (answer["holder"]["since"], began)


def test_a_lease_is_renewed_only_by_its_holders_token(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1", lease=30))
    age_lock(tmp_path, 20)
    rc, answer = ledger(tmp_path, "lock", "renew", "--token", "someone-else")
    assert (rc, answer["extended"], answer["holder"]["who"]) == (1, False, "ada@ctl")
    assert ledger(tmp_path, "lock", "status")[1]["renewed"] >= 20
    rc, answer = ledger(tmp_path, "lock", "renew", "--token", "t1")
    assert (rc, answer["extended"]) == (0, True)
    status = ledger(tmp_path, "lock", "status")[1]
    assert status["renewed"] < 5
    # A renewal moves the last renewal, never the moment the lock was taken.
    assert status["holder"]["since"] == answer["holder"]["since"]
    ledger(tmp_path, "lock", "release", "--token", "t1")
    rc, answer = ledger(tmp_path, "lock", "renew", "--token", "t1")
    assert (rc, answer["extended"], answer["held"]) == (1, False, False)


def test_a_lease_not_renewed_for_its_length_is_stale_with_its_figures(tmp_path: Path) -> None:
    rc, taken = ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1", lease=30))
    assert rc == 0
    assert taken["holder"]["lease"] == 30
    status = ledger(tmp_path, "lock", "status")[1]
    assert (status["held"], status["stale"], status["stale_after"]) == (True, False, 30)
    assert status["renewed"] < 5 and status["age"] < 5
    age_lock(tmp_path, 29)
    assert ledger(tmp_path, "lock", "status")[1]["stale"] is False
    age_lock(tmp_path, 31)
    status = ledger(tmp_path, "lock", "status")[1]
    assert status["stale"] is True and 31 <= status["renewed"] < 40
    assert status["holder"]["who"] == "ada@ctl"
    # A renewal by its holder makes it live again (a controller that was only cut off).
    assert ledger(tmp_path, "lock", "renew", "--token", "t1")[0] == 0
    assert ledger(tmp_path, "lock", "status")[1]["stale"] is False


def test_a_holder_that_states_no_lease_gets_the_default(tmp_path: Path) -> None:
    # A lock written before leases (no "lease"): stale after the default.
    (tmp_path / "deploy.lock").write_text(json.dumps({"who": "old@ctl", "token": "t0"}))
    age_lock(tmp_path, ledger_module.DEFAULT_LEASE - 5)
    status = ledger(tmp_path, "lock", "status")[1]
    assert (status["stale"], status["stale_after"]) == (False, ledger_module.DEFAULT_LEASE)
    age_lock(tmp_path, ledger_module.DEFAULT_LEASE + 5)
    assert ledger(tmp_path, "lock", "status")[1]["stale"] is True


def test_take_over_never_takes_a_live_lease(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1", lease=30))
    age_lock(tmp_path, 25)
    rc, answer = ledger(
        tmp_path, "lock", "acquire", "--holder", holder("bob@ctl", "t2"), "--take-over"
    )
    assert (rc, answer["acquired"], answer["stale"]) == (1, False, False)
    assert answer["holder"]["who"] == "ada@ctl"
    assert ledger(tmp_path, "lock", "status")[1]["holder"]["who"] == "ada@ctl"
    assert history(tmp_path) == []


def test_take_over_of_a_stale_lease_replaces_it_and_is_recorded(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1", lease=30))
    age_lock(tmp_path, 45)
    # Without --take-over a stale lease is refused like a live one, naming it stale.
    rc, answer = ledger(tmp_path, "lock", "acquire", "--holder", holder("bob@ctl", "t2"))
    assert (rc, answer["acquired"], answer["stale"]) == (1, False, True)
    assert answer["renewed"] >= 45 and answer["stale_after"] == 30
    rc, answer = ledger(
        tmp_path, "lock", "acquire", "--holder", holder("bob@ctl", "t2"), "--take-over"
    )
    assert (rc, answer["acquired"], answer["holder"]["who"]) == (0, True, "bob@ctl")
    assert answer["took_over"]["holder"]["who"] == "ada@ctl"
    assert answer["took_over"]["renewed"] >= 45
    status = ledger(tmp_path, "lock", "status")[1]
    assert (status["holder"]["who"], status["stale"]) == ("bob@ctl", False)
    (record,) = history(tmp_path)
    assert (record["action"], record["who"], record["holder"]["who"]) == (
        "lock take-over", "bob@ctl", "ada@ctl",
    )  # fmt: skip
    assert "token" not in record["holder"]
    # The old holder, back from the dead, neither renews nor releases the new holder's lease.
    assert ledger(tmp_path, "lock", "renew", "--token", "t1")[0] == 1
    assert ledger(tmp_path, "lock", "release", "--token", "t1")[0] == 1
    assert ledger(tmp_path, "lock", "status")[1]["holder"]["who"] == "bob@ctl"


def test_of_many_simultaneous_take_overs_exactly_one_wins(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("dead@ctl", "t0", lease=30))
    age_lock(tmp_path, 60)
    results: list[int] = []

    def attempt(n: int) -> None:
        answer = ledger(
            tmp_path, "lock", "acquire", "--holder", holder(f"c{n}", f"t{n}"), "--take-over"
        )
        results.append(answer[0])

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0] + [1] * 5
    assert [r["action"] for r in history(tmp_path)] == ["lock take-over"]


def test_of_many_simultaneous_deploys_exactly_one_gets_the_lock(tmp_path: Path) -> None:
    results: list[int] = []

    def attempt(n: int) -> None:
        results.append(ledger(tmp_path, "lock", "acquire", "--holder", holder(f"c{n}", f"t{n}"))[0])

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0] + [1] * 7


def test_wait_queues_until_the_holder_releases(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1"))
    timer = threading.Timer(1.5, lambda: ledger(tmp_path, "lock", "release", "--token", "t1"))
    timer.start()
    rc, answer = ledger(
        tmp_path, "lock", "acquire", "--holder", holder("bob@ctl", "t2"), "--wait", "20"
    )
    timer.join()
    assert (rc, answer["holder"]["who"]) == (0, "bob@ctl")


def test_the_history_keeps_every_record_in_order_past_a_torn_line(tmp_path: Path) -> None:
    for n in range(3):
        record = json.dumps({"action": "deploy", "to": f"r{n}", "outcome": "succeeded"})
        assert ledger(tmp_path, "history", "append", "--record", record)[0] == 0
    with (tmp_path / "history.jsonl").open("a", encoding="utf-8") as history:
        history.write('{"action": "depl')  # a write cut by a power loss
    records = ledger(tmp_path, "history", "show")[1]["records"]
    assert [r.get("to") for r in records[:3]] == ["r0", "r1", "r2"]
    assert all(r["recorded"].endswith("Z") for r in records[:3])
    assert "corrupt" in records[3]
    assert [
        r.get("to") for r in ledger(tmp_path, "history", "show", "--limit", "2")[1]["records"]
    ] == [
        "r2",
        None,
    ]


def test_bad_input_and_a_missing_directory_exit_2(tmp_path: Path) -> None:
    assert ledger(tmp_path, "lock", "acquire", "--holder", "not json")[0] == 2
    assert ledger(tmp_path, "lock", "acquire", "--holder", holder("a", "t", lease=-1))[0] == 2
    assert ledger(tmp_path, "lock", "acquire", "--holder", holder("a", "t", lease="x"))[0] == 2
    assert ledger(tmp_path, "lock", "renew")[0] == 2  # no --token
    assert ledger(tmp_path, "lock", "renew", "--token", "")[0] == 2
    assert ledger(tmp_path, "history", "append", "--record", "[1, 2]")[0] == 2
    assert ledger(tmp_path / "missing", "lock", "status")[0] == 2


def test_a_balancers_copy_gets_the_records_it_missed_once_in_order(tmp_path: Path) -> None:
    first, copy = tmp_path / "first", tmp_path / "copy"
    first.mkdir()
    copy.mkdir()
    records = [{"action": "deploy", "to": f"1.0.{n}", "started": f"T{n}"} for n in range(4)]
    for record in records:
        ledger_module.history_append(str(first), record)
    # The copy had the first two (appended by the same rollouts, its own clock), then was away.
    for record in records[:2]:
        ledger_module.history_append(str(copy), record)
    source = ledger_module.history_show(str(first))["records"]
    assert ledger_module.history_merge(str(copy), source) == {"appended": True, "merged": 2}
    merged = ledger_module.history_show(str(copy))["records"]
    assert [r["to"] for r in merged] == ["1.0.0", "1.0.1", "1.0.2", "1.0.3"]
    # The merged records keep the first balancer's "recorded" time; a second merge adds nothing.
    assert merged[2:] == source[2:]
    assert ledger_module.history_merge(str(copy), source) == {"appended": False, "merged": 0}
    assert len(ledger_module.history_show(str(copy))["records"]) == 4


def test_the_history_names_the_application_its_newest_carried_out_rollout_served(
    tmp_path: Path,
) -> None:
    directory = str(tmp_path)
    assert ledger_module.history_show(directory)["app"] is None
    ledger_module.history_append(directory, {"app": "shop", "outcome": "succeeded"})
    ledger_module.history_append(directory, {"app": "notes", "outcome": "refused"})
    assert ledger_module.history_show(directory)["app"] == "shop"
    ledger_module.history_append(
        directory, {"app": "notes", "replaced": "shop", "outcome": "rolled_back"}
    )
    assert ledger_module.history_show(directory, limit=1)["app"] == "shop"


def test_finish_appends_the_record_then_releases_only_its_own_lock(tmp_path: Path) -> None:
    """A rollout's last step in one call (finish.yml): the record is kept even when the lock is
    no longer the rollout's (taken over), and only the holder's token releases it."""
    directory = str(tmp_path)
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1"))
    answer = ledger_module.run(directory, "finish", {"record": {"action": "deploy"}, "token": "t2"})
    assert (answer["appended"], answer["released"]) == (True, False)
    assert ledger(tmp_path, "lock", "status")[1]["held"] is True
    answer = ledger_module.run(
        directory, "finish", {"record": {"action": "rollback"}, "token": "t1"}
    )
    assert (answer["appended"], answer["released"]) == (True, True)
    assert ledger(tmp_path, "lock", "status")[1] == FREE
    assert [r["action"] for r in history(tmp_path)] == ["deploy", "rollback"]
    with pytest.raises(ledger_module.LedgerError, match="token"):
        ledger_module.run(directory, "finish", {"record": {"action": "deploy"}, "token": ""})


def test_a_lock_taken_with_history_answers_the_last_records_read_under_it(tmp_path: Path) -> None:
    """A rollout's first step in one call (begin.yml): the lock, then the history's last records
    and the application they name; a lock refused answers them too (the run stops there, and the
    refused attempt is recorded with its application)."""
    directory = str(tmp_path)
    for action in ("deploy", "rollback", "deploy"):
        ledger_module.history_append(directory, {"action": action, "app": "shop"})
    code, answer = ledger(
        tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1"), "--with-history",
        "--limit", "2",
    )  # fmt: skip
    assert code == 0 and answer["acquired"] is True, answer
    assert [r["action"] for r in answer["records"]] == ["rollback", "deploy"]
    assert answer["app"] == "shop"
    refused = ledger_module.run(
        directory, "lock acquire",
        {"holder": json.loads(holder("bob@ctl", "t2")), "with_history": True, "limit": 2},
    )  # fmt: skip
    assert refused["acquired"] is False and refused["holder"]["who"] == "ada@ctl", refused
    assert refused["app"] == "shop" and len(refused["records"]) == 2
    # Without with_history, the answer is the lock's alone, as before.
    ledger(tmp_path, "lock", "release", "--token", "t1")
    plain = ledger_module.run(directory, "lock acquire", {"holder": json.loads(holder("c", "t3"))})
    assert set(plain) == {"acquired", "holder"}


def call(directory: Path, request: str) -> subprocess.CompletedProcess[str]:
    """The helper's ``call``: the module's arguments as one JSON object on stdin."""
    return subprocess.run(
        [sys.executable, str(HELPER), "--dir", str(directory), "call"],
        input=request, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_call_takes_the_modules_arguments_on_stdin_and_answers_as_the_commands(
    tmp_path: Path,
) -> None:
    """What the controller runs over SSH (ledger_ssh.py): a renewal refused exits 1 with its
    answer; a finish records and releases; the token is in no argument."""
    ledger(tmp_path, "lock", "acquire", "--holder", holder("ada@ctl", "t1"))
    refused = call(tmp_path, json.dumps({"command": "lock renew", "token": "t2"}))
    assert refused.returncode == 1 and json.loads(refused.stdout)["extended"] is False
    renewed = call(tmp_path, json.dumps({"command": "lock renew", "token": "t1"}))
    assert renewed.returncode == 0 and json.loads(renewed.stdout)["extended"] is True
    request = {"command": "finish", "record": {"action": "deploy", "to": "r2"}, "token": "t1"}
    finished = call(tmp_path, json.dumps(request))
    assert finished.returncode == 0, finished.stderr
    assert (json.loads(finished.stdout)["appended"], json.loads(finished.stdout)["released"]) == (
        True,
        True,
    )
    assert ledger(tmp_path, "lock", "status")[1] == FREE
    assert [r["to"] for r in history(tmp_path)] == ["r2"]


@pytest.mark.parametrize(
    ("request_text", "said"),
    [
        ("not json", "the request on stdin is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"command": "lock steal"}', "unknown command 'lock steal'"),
        ('{"command": "history append"}', "history append needs record"),
    ],
)
def test_a_bad_call_exits_2_naming_the_problem(
    tmp_path: Path, request_text: str, said: str
) -> None:
    proc = call(tmp_path, request_text)
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    assert history(tmp_path) == []


def test_the_helper_is_installed_where_the_controller_asks_it() -> None:
    """module_utils/ledger.py's HELPER (ledger_ssh.py runs it) is the ledger role's path."""
    role_vars = yaml.safe_load((ROOT / "roles" / "ledger" / "vars" / "main.yml").read_text())
    assert role_vars["__ledger_helper"] == ledger_module.HELPER
