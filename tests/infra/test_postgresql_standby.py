"""Testinfra checks of the postgresql role with ``postgresql_replication: true``, in the molecule
scenario ``postgresql`` (after ``test_postgresql.py``, which checks the primary on its own).

``pg-db`` is the primary, ``pg-db2`` its hot standby: a copy of the primary's data made through
its own replication slot, then streaming. What the application sees is proved from the app host
with its password: a document written on the primary is read on the standby, and a write there is
refused. Last, the promotion command (playbooks/docstore-promote.yml) is run as an operator runs
it: refused while the primary is alive, then, with the primary stopped, the standby takes writes
and has the data.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from lab_probes import only_in_scenario, scenario_hosts
from test_postgresql import APP, LB, SCENARIO, SERVICE, psql, superuser_sql

pytestmark = only_in_scenario(SCENARIO)

ROOT = Path(__file__).resolve().parents[2]
PRIMARY, STANDBY = "pg-db", "pg-db2"
PRIMARY_ADDRESS, STANDBY_ADDRESS = "172.30.105.10", "172.30.105.13"


@pytest.fixture(scope="module")
def hosts(request):
    return scenario_hosts(request, PRIMARY, STANDBY, APP, LB)


@pytest.fixture(scope="module")
def password(hosts) -> str:
    return hosts[PRIMARY].ansible.get_variables()["postgresql_app_password"]


def promote(request, *extra: str) -> subprocess.CompletedProcess[str]:
    """playbooks/docstore-promote.yml, as an operator runs it, on the scenario's inventory."""
    playbook = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run(
        [str(playbook), "-i", request.config.option.ansible_inventory,
         str(ROOT / "playbooks" / "docstore-promote.yml"), "-e", f"docstore_promote={STANDBY}",
         *extra],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip


def test_the_standby_streams_from_the_primary_through_its_slot(hosts):
    # test_postgresql.py has just restarted the primary: the standby reconnects within seconds
    # (wal_retrieve_retry_interval).
    deadline = time.monotonic() + 30
    query = "SELECT pg_is_in_recovery(), status, sender_host FROM pg_stat_wal_receiver"
    while (receiver := superuser_sql(hosts[STANDBY], query)) != f"t|streaming|{PRIMARY_ADDRESS}":
        assert time.monotonic() < deadline, f"the standby is not streaming 30 s on: {receiver!r}"
        time.sleep(0.5)
    slots = superuser_sql(
        hosts[PRIMARY], "SELECT slot_name, slot_type, active FROM pg_replication_slots"
    )
    assert slots == "deploykit_standby_pg_db2|physical|t"
    replicas = superuser_sql(
        hosts[PRIMARY], "SELECT client_addr, state, usename FROM pg_stat_replication"
    )
    assert replicas == f"{STANDBY_ADDRESS}|streaming|replicator"
    assert (
        superuser_sql(hosts[PRIMARY], "SHOW max_slot_wal_keep_size") == "4GB"
    )  # bounded: a dead standby does not fill the primary's disk


def test_a_document_written_on_the_primary_is_read_on_the_standby(hosts, password):
    app = hosts[APP]
    key, value = f"standby-{uuid.uuid4()}", {"total": 7}
    written = psql(
        app,
        "CREATE TABLE IF NOT EXISTS molecule_standby (key text PRIMARY KEY, doc jsonb NOT NULL);"
        f" INSERT INTO molecule_standby VALUES ('{key}', '{json.dumps(value)}')",
        password=password,
    )
    assert written.rc == 0, written.stderr
    started = time.monotonic()
    while True:
        read = psql(
            app,
            f"SELECT doc->>'total' FROM molecule_standby WHERE key = '{key}'",
            password=password,
            address=STANDBY_ADDRESS,
        )
        if read.rc == 0 and read.stdout.strip() == "7":
            break
        assert time.monotonic() - started < 10, f"not on the standby after 10 s: {read.stderr}"
        time.sleep(0.2)
    refused = psql(
        app,
        f"UPDATE molecule_standby SET doc = '{{}}' WHERE key = '{key}'",
        password=password,
        address=STANDBY_ADDRESS,
    )
    assert refused.rc != 0
    assert "read-only transaction" in refused.stderr


def test_the_replication_role_reaches_no_database(hosts, password):
    replicator = (
        hosts[PRIMARY].ansible.get_variables().get("postgresql_replication_user", "replicator")
    )
    attempt = psql(hosts[APP], "SELECT 1", password=password, user=replicator)
    assert attempt.rc != 0
    assert "no pg_hba.conf entry" in attempt.stderr or "rejects" in attempt.stderr


def test_other_groups_cannot_reach_the_standby(hosts):
    knock = hosts[LB].run("timeout 3 bash -c 'echo > /dev/tcp/%s/5432'", STANDBY_ADDRESS)
    assert knock.rc != 0


def test_promotion_is_refused_while_the_primary_lives_then_done(request, hosts, password):
    refused = promote(request)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "still streams from a live primary" in said, said[-2000:]
    assert superuser_sql(hosts[STANDBY], "SELECT pg_is_in_recovery()") == "t"

    assert hosts[PRIMARY].run("systemctl stop %s", SERVICE).rc == 0
    promoted = promote(request)
    assert promoted.returncode == 0, promoted.stdout[-3000:]
    assert "bytes of WAL received but not yet replayed" in promoted.stdout
    assert superuser_sql(hosts[STANDBY], "SELECT pg_is_in_recovery()") == "f"
    app = hosts[APP]
    written = psql(
        app,
        "INSERT INTO molecule_standby VALUES ('after-promotion', '{\"total\": 8}');"
        " SELECT count(*) > 1 FROM molecule_standby",
        password=password,
        address=STANDBY_ADDRESS,
    )
    assert written.rc == 0, written.stderr
    assert written.stdout.strip().splitlines()[-1] == "t"  # the earlier document is there too
    # Asked again, it is a primary already: nothing to promote.
    again = promote(request)
    assert again.returncode != 0
    assert "already a primary" in again.stdout + again.stderr
