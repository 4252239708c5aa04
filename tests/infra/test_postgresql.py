"""Testinfra checks of the postgresql role, run by the molecule scenario ``postgresql``.

The scenario has three hosts on a network of their own:

* ``pg-db`` (docstore, 172.30.105.10): common + postgresql;
* ``pg-app`` (app, 172.30.105.11): psql (postgresql-client, installed by prepare), admitted;
* ``pg-lb`` (lb, 172.30.105.12): not admitted.

The claims are proved with real clients: from ``pg-app`` the application's role stores and reads
JSONB documents by key in its database (and nothing else); pg_hba.conf, not only the firewall,
turns away every other address, role and database (connections from the database host itself
never meet the firewall); ``pg-lb`` cannot reach the port; a document survives a restart.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from lab_probes import knock, listening, only_in_scenario, scenario_hosts

SCENARIO = "postgresql"

pytestmark = only_in_scenario(SCENARIO)

DB, APP, LB = "pg-db", "pg-app", "pg-lb"
DB_ADDRESS = "172.30.105.10"
PORT = 5432
SERVICE = "postgresql@15-main"
REJECTED = "pg_hba.conf rejects connection"


def psql(
    source,
    sql: str,
    *,
    password: str,
    user: str = "app",
    database: str = "app",
    address: str = DB_ADDRESS,
):
    """psql over TCP from ``source``, unaligned, tuples only, stopping at the first error."""
    return source.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql -X -A -t -v ON_ERROR_STOP=1"
        " -h %s -p %s -U %s -d %s -c %s",
        password,
        address,
        str(PORT),
        user,
        database,
        sql,
    )


def superuser_sql(host, sql: str, database: str = "postgres") -> str:
    """SQL as postgres over the local socket (peer), on the database host."""
    result = host.run(
        "runuser -u postgres -- psql -X -A -t -v ON_ERROR_STOP=1 -d %s -c %s", database, sql
    )
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def lab(request):
    """The scenario's hosts by name, from molecule's inventory."""
    return scenario_hosts(request, DB, APP, LB)


@pytest.fixture(scope="module")
def password(lab) -> str:
    """The application role's password, as the lab's inventory sets it."""
    return lab[DB].ansible.get_variables()["postgresql_app_password"]


# --- the service ---------------------------------------------------------------------------------


def test_postgresql_is_installed_running_and_enabled(lab):
    db = lab[DB]
    assert db.package("postgresql-15").is_installed
    assert db.service("postgresql").is_enabled
    assert db.service(SERVICE).is_running


def test_configuration_files(lab):
    db = lab[DB]
    conf = db.file("/etc/postgresql/15/main/conf.d/deploykit.conf")
    assert conf.content_string.startswith("#")
    assert f"listen_addresses = '{DB_ADDRESS},127.0.0.1'" in conf.content_string
    hba = db.file("/etc/postgresql/15/main/pg_hba.conf")
    assert hba.user == "postgres"
    assert hba.mode == 0o640
    rules = [
        line.split("#")[0].split()
        for line in hba.content_string.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["host", '"app"', '"app"', "172.30.105.11/32", "scram-sha-256"],
        # postgresql_replication: the standby (pg-db2), for replication only.
        ["host", "replication", '"replicator"', "172.30.105.13/32", "scram-sha-256"],
        ["local", "all", "all", "reject"],
        ["host", "all", "all", "0.0.0.0/0", "reject"],
        ["host", "all", "all", "::/0", "reject"],
    ]


def test_server_runs_with_that_configuration(lab):
    db = lab[DB]
    assert superuser_sql(db, "SHOW listen_addresses") == f"{DB_ADDRESS},127.0.0.1"
    assert superuser_sql(db, "SHOW password_encryption") == "scram-sha-256"
    # Nothing waits for a restart, and no file has an error.
    assert superuser_sql(db, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    hba_errors = "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL"
    assert superuser_sql(db, hba_errors) == "0"


def test_listens_on_the_private_address_and_loopback_only(lab):
    sockets = listening(lab[DB])
    assert sockets[PORT] == {DB_ADDRESS, "127.0.0.1"}
    wildcard = {port for port, addresses in sockets.items() if addresses & {"0.0.0.0", "::", "*"}}
    assert wildcard <= {22}, sockets


# --- the application's role and database ---------------------------------------------------------


def test_app_role_has_login_only_and_a_scram_password(lab):
    row = superuser_sql(
        lab[DB],
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,"
        " rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'app'",
    )
    assert row == "t|f|f|f|f|f|t"


def test_app_database_is_owned_by_the_app_role_in_utf8(lab):
    row = superuser_sql(
        lab[DB],
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate"
        " FROM pg_database WHERE datname = 'app'",
    )
    assert row == "app|UTF8|C.UTF-8"


# --- from outside: documents by key, and who is turned away --------------------------------------


def test_admitted_group_reaches_the_port(lab):
    assert knock(lab[APP], DB_ADDRESS, PORT) == "open"


def test_other_group_is_dropped_by_the_firewall(lab):
    assert knock(lab[LB], DB_ADDRESS, PORT) == "timeout"


def test_app_stores_and_reads_a_jsonb_document_by_key(lab, password):
    app = lab[APP]
    key = f"user-{uuid.uuid4()}"
    document = {"name": "Ada", "tags": ["admin", "é"], "visits": 3}
    created = psql(
        app,
        "CREATE TABLE IF NOT EXISTS molecule_users (key text PRIMARY KEY, doc jsonb NOT NULL)",
        password=password,
    )
    assert created.rc == 0, created.stderr
    stored = psql(
        app,
        f"INSERT INTO molecule_users (key, doc) VALUES ('{key}', '{json.dumps(document)}')",
        password=password,
    )
    assert stored.rc == 0, stored.stderr
    read = psql(app, f"SELECT doc FROM molecule_users WHERE key = '{key}'", password=password)
    assert read.rc == 0, read.stderr
    assert json.loads(read.stdout) == document
    name = psql(
        app, f"SELECT doc->>'name' FROM molecule_users WHERE key = '{key}'", password=password
    )
    assert name.stdout.strip() == "Ada"


def test_wrong_password_is_refused(lab):
    result = psql(lab[APP], "SELECT 1", password="not-the-password")
    assert result.rc != 0
    assert 'password authentication failed for user "app"' in result.stderr


def test_app_role_is_rejected_on_other_databases(lab, password):
    result = psql(lab[APP], "SELECT 1", password=password, database="postgres")
    assert result.rc != 0
    assert REJECTED in result.stderr, result.stderr


def test_other_roles_are_rejected_from_the_app_host(lab, password):
    result = psql(lab[APP], "SELECT 1", password=password, user="postgres", database="app")
    assert result.rc != 0
    assert REJECTED in result.stderr, result.stderr


def test_pg_hba_rejects_addresses_outside_the_groups_even_without_the_firewall(lab, password):
    # From the database host itself: these connections arrive over loopback, which the firewall
    # admits, from addresses that are not an app or worker host. Right role, right password,
    # right database: pg_hba.conf alone turns them away.
    db = lab[DB]
    for address in (DB_ADDRESS, "127.0.0.1"):
        result = psql(db, "SELECT 1", password=password, address=address)
        assert result.rc != 0
        assert REJECTED in result.stderr, (address, result.stderr)


def test_local_socket_admits_postgres_only(lab):
    result = lab[DB].run("runuser -u postgres -- psql -X -U app -d app -c %s", "SELECT 1")
    assert result.rc != 0
    assert REJECTED in result.stderr, result.stderr


# --- the password is rotated, and an unchanged password changes nothing --------------------------


def test_new_password_is_applied_and_then_left_alone(lab, password):
    """The role's postgresql_user call, run as the role runs it (as postgres, over the socket)."""
    db, app = lab[DB], lab[APP]
    # A server whose role still has an old password (as before a rotation in the vault).
    superuser_sql(db, "ALTER ROLE app PASSWORD 'the-old-password'")
    assert psql(app, "SELECT 1", password=password).rc != 0

    flags = "LOGIN,NOSUPERUSER,NOCREATEDB,NOCREATEROLE,NOREPLICATION,NOBYPASSRLS"
    args = json.dumps(
        {
            "name": "app",
            "password": password,
            "role_attr_flags": flags,
            "login_db": "postgres",
            "state": "present",
        }
    )
    run = dict(check=False, become=True, become_user="postgres")
    assert db.ansible("community.postgresql.postgresql_user", args, **run)["changed"] is True
    assert db.ansible("community.postgresql.postgresql_user", args, **run)["changed"] is False
    assert psql(app, "SELECT 1", password=password).rc == 0


# --- data survives a restart ---------------------------------------------------------------------


def test_document_survives_a_restart(lab, password):
    db, app = lab[DB], lab[APP]
    key, value = f"order-{uuid.uuid4()}", {"total": 42, "lines": [{"sku": "A1", "qty": 2}]}
    stored = psql(
        app,
        "CREATE TABLE IF NOT EXISTS molecule_orders (key text PRIMARY KEY, doc jsonb NOT NULL);"
        f" INSERT INTO molecule_orders VALUES ('{key}', '{json.dumps(value)}')",
        password=password,
    )
    assert stored.rc == 0, stored.stderr

    before = db.run("systemctl show -p MainPID --value %s", SERVICE).stdout.strip()
    restart = db.run("systemctl restart %s", SERVICE)
    assert restart.rc == 0, restart.stderr
    after = db.run("systemctl show -p MainPID --value %s", SERVICE).stdout.strip()
    assert after != before, "PostgreSQL was not restarted"

    deadline = time.monotonic() + 60
    while knock(app, DB_ADDRESS, PORT) != "open":
        assert time.monotonic() < deadline, "PostgreSQL did not come back within 60 s"
        time.sleep(1)
    read = psql(app, f"SELECT doc FROM molecule_orders WHERE key = '{key}'", password=password)
    assert read.rc == 0, read.stderr
    assert json.loads(read.stdout) == value
