"""The security claims of site.yml, proven from outside on the converged lab: each service admits
only the groups that need it, requires its credentials, and comes back with its data after its
host restarts."""

from __future__ import annotations

import time

import pytest
import yaml
from conftest import ROOT, LabShell
from probes import AMQP_LOGIN, REDIS_COMMAND, TCP_CONNECT

from deploykit import lab

pytestmark = pytest.mark.e2e

REDIS_PORT, AMQP_PORT, POSTGRES_PORT, STATS_PORT = "6379", "5672", "5432", "8404"


@pytest.fixture(scope="module")
def secrets(site_converged: dict[str, object]) -> dict[str, str]:
    assert site_converged["status"] == "successful", site_converged["failures"]
    loaded: dict[str, str] = yaml.safe_load(lab.secrets_file(ROOT).read_text())
    return loaded


def test_redis_refuses_unauthenticated_commands(
    lab_shell: LabShell, secrets: dict[str, str]
) -> None:
    cache = lab_shell.addresses["cache1"]
    reply = lab_shell.python("app1", REDIS_COMMAND, cache, REDIS_PORT, "GET", "anything")
    assert reply.startswith("-NOAUTH"), reply
    auth = {"REDIS_AUTH": f"app {secrets['redis_password']}"}
    replies = lab_shell.python("app1", REDIS_COMMAND, cache, REDIS_PORT, "PING", env=auth)
    assert replies.splitlines() == ["+OK", "+PONG"]
    denied = lab_shell.python("app1", REDIS_COMMAND, cache, REDIS_PORT, "FLUSHALL", env=auth)
    assert denied.splitlines()[-1].startswith("-NOPERM"), denied


def test_redis_cannot_be_reached_from_the_balancer(lab_shell: LabShell) -> None:
    cache = lab_shell.addresses["cache1"]
    assert lab_shell.python("lb1", TCP_CONNECT, cache, REDIS_PORT) == "timeout"
    assert lab_shell.python("worker1", TCP_CONNECT, cache, REDIS_PORT) == "open"


def test_rabbitmq_rejects_guest_and_admits_the_app(
    lab_shell: LabShell, secrets: dict[str, str]
) -> None:
    queue = lab_shell.addresses["queue1"]
    guest = lab_shell.python("app1", AMQP_LOGIN, queue, AMQP_PORT, "guest", "guest")
    assert guest == "refused"
    app = secrets["rabbitmq_app_password"]
    assert lab_shell.python("app1", AMQP_LOGIN, queue, AMQP_PORT, "app", app) == "accepted"
    assert lab_shell.python("lb1", TCP_CONNECT, queue, AMQP_PORT) == "timeout"


def test_the_docstore_refuses_the_balancer(lab_shell: LabShell) -> None:
    db = lab_shell.addresses["db1"]
    assert lab_shell.python("lb1", TCP_CONNECT, db, POSTGRES_PORT) == "timeout"
    assert lab_shell.python("app1", TCP_CONNECT, db, POSTGRES_PORT) == "open"


def test_haproxy_stats_need_the_password(lab_shell: LabShell, secrets: dict[str, str]) -> None:
    url = f"http://{lab_shell.addresses['lb1']}:{STATS_PORT}/stats"
    curl = "curl -s -o /dev/null -w '%{http_code}'"
    assert lab_shell.run("lb1", f"{curl} {url}") == "401"
    password = secrets["haproxy_stats_password"]
    assert lab_shell.run("lb1", f"{curl} -u admin:{password} {url}") == "200"
    # The stats listener is on the private address only: nothing else reaches it.
    assert (
        lab_shell.python("app1", TCP_CONNECT, lab_shell.addresses["lb1"], STATS_PORT) == "timeout"
    )


def _wait_for(predicate: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(1)
    pytest.fail(f"{what} not back after {timeout:.0f} s")


def test_services_come_back_with_their_data_after_a_host_restart(
    lab_shell: LabShell, secrets: dict[str, str]
) -> None:
    cache = lab_shell.addresses["cache1"]
    auth = {"REDIS_AUTH": f"app {secrets['redis_password']}"}
    lab_shell.python(
        "app1", REDIS_COMMAND, cache, REDIS_PORT, "SET", "session:e2e", "alive", env=auth
    )
    psql = "runuser -u postgres -- psql -d app -tA -v ON_ERROR_STOP=1"
    document = """
        CREATE TABLE IF NOT EXISTS e2e_restart (key text PRIMARY KEY, doc jsonb);
        INSERT INTO e2e_restart VALUES ('k', '{"n": 1}') ON CONFLICT DO NOTHING;
    """
    lab_shell.run("db1", psql, stdin=document)

    client = lab.docker_client()
    for host in ("cache1", "db1", "queue1", "lb1"):
        client.containers.get(lab.CONTAINER_PREFIX + host).restart(timeout=30)
    for host, unit in (("cache1", "redis-server"), ("db1", "postgresql@15-main"),
                       ("queue1", "rabbitmq-server"), ("lb1", "haproxy")):  # fmt: skip
        _wait_for(lambda h=host, u=unit: lab_shell.succeeds(h, f"systemctl is-active --quiet {u}"),
                  f"{unit} on {host}")  # fmt: skip

    def session_back() -> bool:
        reply = lab_shell.python(
            "app1", REDIS_COMMAND, cache, REDIS_PORT, "GET", "session:e2e", env=auth
        )
        return reply.splitlines()[-1] == "alive"

    _wait_for(session_back, "the Redis session key")
    assert (
        lab_shell.run("db1", psql, stdin="SELECT doc->>'n' FROM e2e_restart WHERE key = 'k';")
        == "1"
    )
    users = lab_shell.run("queue1", "rabbitmqctl -q list_users")
    assert "app" in users and "guest" not in users
    _wait_for(lambda: lab_shell.python("app1", AMQP_LOGIN, lab_shell.addresses["queue1"], AMQP_PORT,
                                       "app", secrets["rabbitmq_app_password"]) == "accepted",
              "RabbitMQ's app login")  # fmt: skip
    # The firewall came back too: the balancer still cannot reach Redis.
    assert lab_shell.python("lb1", TCP_CONNECT, cache, REDIS_PORT) == "timeout"
