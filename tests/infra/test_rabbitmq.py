"""Testinfra checks of the rabbitmq role, run by the molecule scenario ``rabbitmq``.

The scenario has three hosts on a network of their own:

* ``mq-queue`` (queue, 172.30.104.10): common + rabbitmq;
* ``mq-app`` (app, 172.30.104.11): an AMQP client (python3-pika, installed by prepare), admitted;
* ``mq-lb`` (lb, 172.30.104.12): not admitted to AMQP;
* ``mq-node1..3`` (queue_ha, 172.30.104.13-15): common + rabbitmq with ``rabbitmq_cluster``, one
  cluster of three.

The security claims are proved over the network from ``mq-app`` with a real AMQP client (the
application user gets in, guest and other vhosts do not), the firewall from ``mq-lb``, and
persistence by publishing a persistent message to a durable queue, restarting RabbitMQ and
reading the message back. The cluster is proved by its status on every node, its ports (open to
its members, closed to the app host), a quorum queue that keeps every confirmed message when its
leader's node stops, and a node that was reset joining again on the next run.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from lab_probes import knock, listening, only_in_scenario, scenario_hosts
from role_tasks import run_role_tasks

SCENARIO = "rabbitmq"

pytestmark = only_in_scenario(SCENARIO)

QUEUE, APP, LB = "mq-queue", "mq-app", "mq-lb"
QUEUE_ADDRESS = "172.30.104.10"
AMQP_PORT = 5672
# The cluster: host -> private address; its node names are rabbit@<address>.
CLUSTER = {"mq-node1": "172.30.104.13", "mq-node2": "172.30.104.14", "mq-node3": "172.30.104.15"}
NODE_NAMES = sorted(f"rabbit@{address}" for address in CLUSTER.values())


# Runs on mq-app with pika:
#   python3 -c AMQP <action> <address> <user> <password> <vhost> [queue [body]]
#   connect  open a connection and a channel                     -> ok
#   publish  declare a durable queue, publish a persistent message (publisher confirms) -> ok
#   get      read one message from the (existing, durable) queue -> the body, or "empty"
#   publish-quorum  declare a quorum queue, publish N persistent messages, each confirmed -> ok
#   drain-quorum    read every message of the quorum queue -> {"count": n, "unique": n}
# Any failure prints "error: <exception type>: <message>".
AMQP = """
import json
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
    elif action == "publish-quorum":
        queue, count = sys.argv[6], int(sys.argv[7])
        channel.confirm_delivery()
        channel.queue_declare(queue=queue, durable=True, arguments={"x-queue-type": "quorum"})
        for number in range(count):
            channel.basic_publish(exchange="", routing_key=queue, body=str(number).encode(),
                                  properties=pika.BasicProperties(delivery_mode=2), mandatory=True)
        print("ok")
    elif action == "drain-quorum":
        queue, bodies = sys.argv[6], []
        channel.queue_declare(queue=queue, durable=True, arguments={"x-queue-type": "quorum"})
        while True:
            method, properties, body = channel.basic_get(queue=queue, auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        channel.queue_delete(queue=queue)
        print(json.dumps({"count": len(bodies), "unique": len(set(bodies))}))
    connection.close()
except Exception as error:
    print(describe(error))
"""


def amqp(
    source,
    action: str,
    user: str,
    password: str,
    vhost: str,
    *extra: str,
    address: str = QUEUE_ADDRESS,
) -> str:
    """Run an AMQP action from ``source`` against a node (the single queue host unless
    ``address``); its one-line outcome."""
    args = [action, address, user, password, vhost, *extra]
    result = source.run("python3 -c %s" + " %s" * len(args), AMQP, *args)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def rabbitmqctl(host, *args: str):
    """rabbitmqctl as the rabbitmq account (as the role runs it)."""
    return host.run("runuser -u rabbitmq -- rabbitmqctl -q" + " %s" * len(args), *args)


@pytest.fixture(scope="module")
def lab(request):
    """The scenario's hosts by name, from molecule's inventory."""
    return scenario_hosts(request, QUEUE, APP, LB, *CLUSTER)


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


def run_app_user_tasks(inventory: str, *extra: str) -> tuple[dict[str, int], str]:
    """tasks/app_user.yml on the single queue host: its recap counts and the output."""
    recaps, output = run_role_tasks(inventory, QUEUE, "rabbitmq", "app_user", *extra)
    assert QUEUE in recaps, output[-3000:]
    return recaps[QUEUE], output


def test_new_password_is_applied_and_then_left_alone(lab, queue_vars, request):
    """The role's own tasks (tasks/app_user.yml): a password that differs is set, without showing
    it even at -vvv, and a second run changes nothing. The scenario's password begins with '-'
    (which rabbitmqctl would take for an option, were it an argument) and holds shell characters."""
    queue, app = lab[QUEUE], lab[APP]
    password = queue_vars["rabbitmq_app_password"]
    assert password.startswith("-")
    # A host whose user still has an old password (as before a rotation in the vault).
    assert rabbitmqctl(queue, "change_password", "app", "the-old-password").rc == 0
    assert "Authentication" in amqp(app, "connect", "app", password, "app")

    inventory = request.config.option.ansible_inventory
    counts, output = run_app_user_tasks(inventory, "-vvv")
    assert counts["changed"] == 1, output[-3000:]
    assert password not in output
    assert amqp(app, "connect", "app", password, "app") == "ok"
    counts, output = run_app_user_tasks(inventory)
    assert counts["changed"] == 0, output[-3000:]
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


# --- the cluster ---------------------------------------------------------------------------------


def cluster_status(host) -> dict:
    status = rabbitmqctl(host, "cluster_status", "--formatter", "json")
    assert status.rc == 0, status.stderr
    return json.loads(status.stdout)


def wait_for_running_nodes(host, count: int, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status = rabbitmqctl(host, "cluster_status", "--formatter", "json")
        if status.rc == 0 and len(json.loads(status.stdout)["running_nodes"]) == count:
            return json.loads(status.stdout)
        assert time.monotonic() < deadline, (
            f"not {count} running nodes within {seconds:.0f} s: {status.stdout}"
        )
        time.sleep(1)


@pytest.fixture(scope="module")
def cluster_vars(lab) -> dict:
    return lab["mq-node1"].ansible.get_variables()


def test_cluster_every_node_sees_the_three(lab):
    for host in CLUSTER:
        status = cluster_status(lab[host])
        assert sorted(status["disk_nodes"]) == NODE_NAMES, host
        assert sorted(status["running_nodes"]) == NODE_NAMES, host
        assert status["cluster_name"] == "deploykit-queue_ha"
        assert status["partitions"] == {}
    # The single node is nobody's member.
    assert cluster_status(lab[QUEUE])["disk_nodes"] == ["rabbit@localhost"]


def test_cluster_listens_on_the_private_address_and_loopback_only(lab):
    for host, address in CLUSTER.items():
        sockets = listening(lab[host])
        assert sockets[AMQP_PORT] == {address}
        assert sockets[4369] == {"127.0.0.1", address}
        assert sockets[25672] == {address}
        wildcard = {
            port for port, addresses in sockets.items() if addresses & {"0.0.0.0", "::", "*"}
        }
        assert wildcard <= {22}, sockets
    env = lab["mq-node1"].file("/etc/rabbitmq/rabbitmq-env.conf").content_string
    assert "NODENAME=rabbit@172.30.104.13" in env
    assert "USE_LONGNAME=true" in env
    conf = lab["mq-node1"].file("/etc/rabbitmq/rabbitmq.conf").content_string
    assert "cluster_partition_handling = pause_minority" in conf


def test_cluster_ports_are_admitted_from_its_members_only(lab):
    first = CLUSTER["mq-node1"]
    for port in (4369, 25672):
        assert knock(lab["mq-node2"], first, port) == "open", port
        assert knock(lab[APP], first, port) == "timeout", port
    assert knock(lab[APP], first, AMQP_PORT) == "open"
    assert knock(lab[LB], first, AMQP_PORT) == "timeout"


def test_cluster_users_are_set_once_for_every_node(lab, cluster_vars):
    for host in CLUSTER:
        users = rabbitmqctl(lab[host], "list_users", "--formatter", "json")
        assert users.rc == 0, users.stderr
        assert sorted(user["user"] for user in json.loads(users.stdout)) == ["app"], host
    password = cluster_vars["rabbitmq_app_password"]
    for address in CLUSTER.values():
        assert amqp(lab[APP], "connect", "app", password, "app", address=address) == "ok"


def test_quorum_queue_keeps_every_confirmed_message_when_its_leaders_node_stops(lab, cluster_vars):
    app, password = lab[APP], cluster_vars["rabbitmq_app_password"]
    queue, count = f"molecule-quorum-{uuid.uuid4().hex[:8]}", 300
    first = CLUSTER["mq-node1"]
    assert (
        amqp(app, "publish-quorum", "app", password, "app", queue, str(count), address=first)
        == "ok"
    )
    columns = ("name", "type", "leader", "members")
    listed = rabbitmqctl(
        lab["mq-node1"], "list_queues", "-p", "app", *columns, "--formatter", "json"
    )
    assert listed.rc == 0, listed.stderr
    (entry,) = [q for q in json.loads(listed.stdout) if q["name"] == queue]
    assert entry["type"] == "quorum"
    assert sorted(entry["members"]) == NODE_NAMES  # a copy on every node
    leader_host = next(
        host for host, address in CLUSTER.items() if entry["leader"] == f"rabbit@{address}"
    )
    survivor = next(address for host, address in CLUSTER.items() if host != leader_host)
    stopped = lab[leader_host].run("systemctl stop rabbitmq-server")
    assert stopped.rc == 0, stopped.stderr
    try:
        started = time.monotonic()
        outcome = amqp(app, "drain-quorum", "app", password, "app", queue, address=survivor)
        elapsed = time.monotonic() - started
        print(f"leader {leader_host} stopped: {outcome} read from {survivor} in {elapsed:.1f} s")
        assert json.loads(outcome) == {"count": count, "unique": count}
    finally:
        assert lab[leader_host].run("systemctl start rabbitmq-server").rc == 0
    wait_for_running_nodes(lab["mq-node1"], 3, 120)


def test_a_node_that_was_reset_joins_again_on_the_next_run(lab, request):
    node3 = lab["mq-node3"]
    for command in ("stop_app", "reset", "start_app"):
        result = rabbitmqctl(node3, command)
        assert result.rc == 0, result.stderr
    assert cluster_status(node3)["disk_nodes"] == ["rabbit@172.30.104.15"]
    assert sorted(cluster_status(lab["mq-node1"])["disk_nodes"]) == NODE_NAMES[:2]

    inventory = request.config.option.ansible_inventory
    recaps, output = run_role_tasks(inventory, "queue_ha", "rabbitmq", "cluster")
    assert recaps["mq-node3"]["changed"] == 1, output[-3000:]
    assert recaps["mq-node1"]["changed"] == recaps["mq-node2"]["changed"] == 0, output[-3000:]
    assert sorted(cluster_status(node3)["running_nodes"]) == NODE_NAMES
    recaps, output = run_role_tasks(inventory, "queue_ha", "rabbitmq", "cluster")
    assert all(counts["changed"] == 0 for counts in recaps.values()), output[-3000:]
