"""Testinfra checks of the rabbitmq role, run by the molecule scenario ``rabbitmq``.

The scenario has three hosts on a network of their own:

* ``mq-queue`` (queue, 172.30.104.10): common + rabbitmq;
* ``mq-app`` (app, 172.30.104.11): an AMQP client (python3-pika, installed by prepare), admitted;
* ``mq-lb`` (lb, 172.30.104.12): not admitted to AMQP.

The security claims are proved over the network from ``mq-app`` with a real AMQP client (the
application user gets in, guest and other vhosts do not), the firewall from ``mq-lb``, and
persistence by publishing a persistent message to a durable queue, restarting RabbitMQ and
reading the message back.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import testinfra

SCENARIO = "rabbitmq"

pytestmark = pytest.mark.skipif(
    os.environ.get("MOLECULE_SCENARIO_NAME", SCENARIO) != SCENARIO,
    reason="hosts of the molecule scenario 'rabbitmq' only",
)

QUEUE, APP, LB = "mq-queue", "mq-app", "mq-lb"
QUEUE_ADDRESS = "172.30.104.10"
AMQP_PORT = 5672

# Runs on the source host: connect to (address, port) and say how it went.
KNOCK = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("open")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as error:
    print("error: %s" % error)
"""

# Runs on mq-app with pika:
#   python3 -c AMQP <action> <address> <user> <password> <vhost> [queue [body]]
#   connect  open a connection and a channel                     -> ok
#   publish  declare a durable queue, publish a persistent message (publisher confirms) -> ok
#   get      read one message from the (existing, durable) queue -> the body, or "empty"
# Any failure prints "error: <exception type>: <message>".
AMQP = """
import sys
import pika

action, address, user, password, vhost = sys.argv[1:6]
params = pika.ConnectionParameters(
    host=address, port=5672, virtual_host=vhost,
    credentials=pika.PlainCredentials(user, password),
    connection_attempts=1, socket_timeout=5, blocked_connection_timeout=10,
)

def describe(error):
    inner = getattr(error, "exceptions", None)
    inner = inner or [arg for arg in error.args if isinstance(arg, Exception)]
    names = [type(error).__name__] + [type(e).__name__ for e in inner]
    return "error: %s: %s" % ("/".join(names), error)

try:
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    if action == "connect":
        print("ok")
    elif action == "publish":
        queue, body = sys.argv[6:8]
        channel.confirm_delivery()
        channel.queue_declare(queue=queue, durable=True)
        channel.basic_publish(exchange="", routing_key=queue, body=body.encode(),
                              properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
        print("ok")
    elif action == "get":
        queue = sys.argv[6]
        channel.queue_declare(queue=queue, durable=True, passive=True)
        method, properties, body = channel.basic_get(queue=queue, auto_ack=True)
        print(body.decode() if method else "empty")
    connection.close()
except Exception as error:
    print(describe(error))
"""


def knock(source, address: str, port: int, timeout: float = 3.0) -> str:
    """Open a TCP connection from ``source`` to address:port: open, timeout, refused or error."""
    result = source.run("python3 -c %s %s %s %s", KNOCK, address, str(port), str(timeout))
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def amqp(source, action: str, user: str, password: str, vhost: str, *extra: str) -> str:
    """Run an AMQP action from ``source`` against the queue host; its one-line outcome."""
    args = [action, QUEUE_ADDRESS, user, password, vhost, *extra]
    result = source.run("python3 -c %s" + " %s" * len(args), AMQP, *args)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def rabbitmqctl(host, *args: str):
    """rabbitmqctl as the rabbitmq account (as the role runs it)."""
    return host.run("runuser -u rabbitmq -- rabbitmqctl -q" + " %s" * len(args), *args)


@pytest.fixture(scope="module")
def lab(request):
    """The scenario's hosts by name, from molecule's inventory."""
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)
        for name in (QUEUE, APP, LB)
    }


@pytest.fixture(scope="module")
def queue_vars(lab) -> dict:
    """The inventory variables of the queue host (the password and cookie the lab set)."""
    return lab[QUEUE].ansible.get_variables()


# --- the service ---------------------------------------------------------------------------------


def test_rabbitmq_is_installed_running_and_enabled(lab):
    queue = lab[QUEUE]
    assert queue.package("rabbitmq-server").is_installed
    service = queue.service("rabbitmq-server")
    assert service.is_running
    assert service.is_enabled


def test_node_name_is_on_loopback(lab):
    status = rabbitmqctl(lab[QUEUE], "status", "--formatter", "json")
    assert status.rc == 0, status.stderr
    assert "rabbit@localhost" in status.stdout


def test_configuration_files(lab):
    queue = lab[QUEUE]
    conf = queue.file("/etc/rabbitmq/rabbitmq.conf").content_string
    assert conf.startswith("#")
    assert f"listeners.tcp.1 = {QUEUE_ADDRESS}:{AMQP_PORT}" in conf
    assert "distribution.listener.interface = 127.0.0.1" in conf
    assert "management." not in conf
    env = queue.file("/etc/rabbitmq/rabbitmq-env.conf").content_string
    assert "NODENAME=rabbit@localhost" in env
    assert "export ERL_EPMD_ADDRESS=127.0.0.1" in env
    dropin = queue.file("/etc/systemd/system/epmd.socket.d/deploykit.conf").content_string
    assert "ListenStream=\nListenStream=127.0.0.1:4369" in dropin


# --- where it listens ----------------------------------------------------------------------------


def listening(host) -> dict[int, set[str]]:
    """Listening TCP sockets on ``host``: port -> addresses."""
    sockets: dict[int, set[str]] = {}
    for url in host.socket.get_listening_sockets():
        if not url.startswith("tcp://"):
            continue
        address, _, port = url[len("tcp://") :].rpartition(":")
        sockets.setdefault(int(port), set()).add(address)
    return sockets


def test_amqp_listens_on_the_private_address_only(lab):
    assert listening(lab[QUEUE])[AMQP_PORT] == {QUEUE_ADDRESS}


def test_epmd_and_distribution_listen_on_loopback_only(lab):
    sockets = listening(lab[QUEUE])
    assert sockets[4369] == {"127.0.0.1"}
    assert sockets[25672] == {"127.0.0.1"}


def test_nothing_else_listens_on_every_address(lab):
    # Only sshd may listen on the wildcard addresses; the management UI (15672) is off.
    sockets = listening(lab[QUEUE])
    wildcard = {port for port, addresses in sockets.items() if addresses & {"0.0.0.0", "::", "*"}}
    assert wildcard <= {22}, sockets
    assert 15672 not in sockets


def test_management_plugin_is_not_enabled(lab):
    plugins = lab[QUEUE].run("runuser -u rabbitmq -- rabbitmq-plugins list -E -m")
    assert plugins.rc == 0, plugins.stderr
    assert "rabbitmq_management" not in plugins.stdout


# --- users, vhost, cookie ------------------------------------------------------------------------


def test_guest_is_gone_and_the_app_user_exists(lab):
    users = rabbitmqctl(lab[QUEUE], "list_users", "--formatter", "json")
    assert users.rc == 0, users.stderr
    names = {user["user"]: user["tags"] for user in json.loads(users.stdout)}
    assert "guest" not in names
    assert names.get("app") == [], "the app user must exist, with no tags"


def test_app_user_has_full_permissions_on_its_vhost_only(lab):
    permissions = rabbitmqctl(lab[QUEUE], "list_user_permissions", "app", "--formatter", "json")
    assert permissions.rc == 0, permissions.stderr
    assert json.loads(permissions.stdout) == [
        {"vhost": "app", "configure": ".*", "write": ".*", "read": ".*"}
    ]


def test_erlang_cookie_is_the_configured_one(lab, queue_vars):
    cookie = lab[QUEUE].file("/var/lib/rabbitmq/.erlang.cookie")
    assert cookie.user == "rabbitmq"
    assert cookie.group == "rabbitmq"
    assert cookie.mode == 0o400
    assert cookie.content_string == queue_vars["rabbitmq_erlang_cookie"]


# --- from outside: the firewall and AMQP authentication ------------------------------------------


def test_admitted_group_reaches_amqp(lab):
    assert knock(lab[APP], QUEUE_ADDRESS, AMQP_PORT) == "open"


def test_other_group_is_dropped(lab):
    assert knock(lab[LB], QUEUE_ADDRESS, AMQP_PORT) == "timeout"


def test_app_user_connects_over_the_network(lab, queue_vars):
    password = queue_vars["rabbitmq_app_password"]
    assert amqp(lab[APP], "connect", "app", password, "app") == "ok"


def test_wrong_password_is_refused(lab):
    outcome = amqp(lab[APP], "connect", "app", "not-the-password", "app")
    assert "Authentication" in outcome, outcome


def test_guest_is_refused(lab):
    outcome = amqp(lab[APP], "connect", "guest", "guest", "/")
    assert "Authentication" in outcome, outcome


def test_app_user_is_refused_on_other_vhosts(lab, queue_vars):
    password = queue_vars["rabbitmq_app_password"]
    outcome = amqp(lab[APP], "connect", "app", password, "/")
    assert "AccessDenied" in outcome, outcome


# --- the password is rotated, and an unchanged password changes nothing --------------------------


def test_new_password_is_applied_and_then_left_alone(lab, queue_vars):
    """The role's rabbitmq_user call (update_password: always), run as the role runs it."""
    queue, app = lab[QUEUE], lab[APP]
    password = queue_vars["rabbitmq_app_password"]
    # A host whose user still has an old password (as before a rotation in the vault).
    assert rabbitmqctl(queue, "change_password", "app", "the-old-password").rc == 0
    assert "Authentication" in amqp(app, "connect", "app", password, "app")

    args = json.dumps(
        {
            "user": "app",
            "password": password,
            "update_password": "always",
            "tags": "",
            "permissions": [
                {"vhost": "app", "configure_priv": ".*", "write_priv": ".*", "read_priv": ".*"}
            ],
            "node": "rabbit@localhost",
            "state": "present",
        }
    )
    run = dict(check=False, become=True, become_user="rabbitmq")
    assert queue.ansible("community.rabbitmq.rabbitmq_user", args, **run)["changed"] is True
    assert queue.ansible("community.rabbitmq.rabbitmq_user", args, **run)["changed"] is False
    assert amqp(app, "connect", "app", password, "app") == "ok"


# --- messages survive a restart ------------------------------------------------------------------


def test_persistent_message_survives_a_restart(lab, queue_vars):
    queue, app = lab[QUEUE], lab[APP]
    password = queue_vars["rabbitmq_app_password"]
    name, body = "molecule-persistence", f"survives-{uuid.uuid4()}"

    assert amqp(app, "publish", "app", password, "app", name, body) == "ok"
    before = queue.run("systemctl show -p MainPID --value rabbitmq-server").stdout.strip()
    restart = queue.run("systemctl restart rabbitmq-server")
    assert restart.rc == 0, restart.stderr
    after = queue.run("systemctl show -p MainPID --value rabbitmq-server").stdout.strip()
    assert after != before, "rabbitmq-server was not restarted"

    deadline = time.monotonic() + 60
    while knock(app, QUEUE_ADDRESS, AMQP_PORT) != "open":
        assert time.monotonic() < deadline, "RabbitMQ did not come back within 60 s"
        time.sleep(1)
    assert amqp(app, "get", "app", password, "app", name) == body
