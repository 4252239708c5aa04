"""The deploy ledger's helper (roles/ledger/files/deploykit-ledger), run as the balancer runs it,
on a temporary directory: one holder at a time, its own lock released only by its token, the
history kept line by line and readable past a torn last line."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "roles" / "ledger" / "files" / "deploykit-ledger"


def ledger(directory: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(HELPER), "--dir", str(directory), *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}


def holder(who: str, token: str) -> str:
    return json.dumps({"who": who, "token": token, "command": "deploy", "release": "r2"})


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
    assert ledger(tmp_path, "lock", "status")[1] == {"held": False, "holder": None, "age": None}


def test_an_operator_release_without_token_clears_a_dead_holders_lock(tmp_path: Path) -> None:
    ledger(tmp_path, "lock", "acquire", "--holder", holder("dead@ctl", "t1"))
    rc, answer = ledger(tmp_path, "lock", "release")
    assert (rc, answer["released"], answer["holder"]["who"]) == (0, True, "dead@ctl")


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
    assert ledger(tmp_path, "history", "append", "--record", "[1, 2]")[0] == 2
    assert ledger(tmp_path / "missing", "lock", "status")[0] == 2
