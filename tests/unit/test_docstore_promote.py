"""playbooks/docstore-promote.yml refuses bad input before any host is contacted.

The inventory's hosts have addresses nothing answers on (TEST-NET-1): a run that reached for one
would say UNREACHABLE. Each bad input must stop in the first play, on the controller, with a
message that names what to give. The promotion itself is tested on real hosts in the molecule
scenario ``postgresql`` (tests/infra/test_postgresql_standby.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "docstore-promote.yml"

INVENTORY = """\
all:
  children:
    docstore:
      hosts:
        db1: {ansible_host: 192.0.2.10}
        db2: {ansible_host: 192.0.2.11}
    app:
      hosts:
        app1: {ansible_host: 192.0.2.20}
  vars:
    postgresql_replication: REPLICATION
"""


def run(tmp_path: Path, *extra: str, replication: bool = True) -> subprocess.CompletedProcess[str]:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(INVENTORY.replace("REPLICATION", str(replication).lower()))
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
         str(PLAYBOOK), *extra],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "replication", "given"),
    [
        ((), True, "given: nothing"),
        (("-e", "docstore_promote=db3"), True, "given: db3"),
        (("-e", "docstore_promote=app1"), True, "given: app1"),
        (("-e", "docstore_promote=db2"), False, "given: db2"),
    ],
    ids=["nothing", "unknown-host", "not-a-docstore-host", "without-replication"],
)
def test_bad_input_stops_on_the_controller(
    tmp_path: Path, extra: tuple[str, ...], replication: bool, given: str
) -> None:
    result = run(tmp_path, *extra, replication=replication)
    said = result.stdout + result.stderr
    assert result.returncode == 2, said[-2000:]
    assert "docstore_promote must name one host of the group docstore (db1, db2)" in said
    assert given in said
    assert "UNREACHABLE" not in said
    assert "Promote a PostgreSQL standby to primary" not in said  # the second play never ran
