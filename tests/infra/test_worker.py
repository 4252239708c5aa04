"""Testinfra checks of the worker role, run by the molecule scenario ``worker``.

One node, ``worker-node`` (group worker), with Debian's RabbitMQ on loopback (prepare.yml). The
worker role deployed two applications there: molecule/worker/jobs (a Celery worker whose task
sleeps, then logs that it finished) and tests/fixtures/minimal_app (no worker: nothing at all).
"""

from __future__ import annotations

import json
import time

import pytest
from lab_probes import RELEASE_UNIT_SANDBOX, only_in_scenario, scenario_host, unit_properties

SCENARIO = "worker"

pytestmark = only_in_scenario(SCENARIO)

NODE = "worker-node"
APP = "/srv/jobs"
TEMPLATE = "jobs-worker@.service"
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
HELPER = "/usr/local/libexec/deploykit-release"


@pytest.fixture(scope="module")
def node(request):
    return scenario_host(request, NODE)


def live_release(node) -> str:
    return node.run("readlink %s/current", APP).stdout.strip().rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def unit(node) -> str:
    """The live release's instance of the worker's template (the release ids here hold no
    character systemd escapes)."""
    return f"jobs-worker@{live_release(node)}.service"


@pytest.fixture
def worker_running(node, unit):
    def restore():
        node.run("systemctl start %s", unit)
        assert node.service(unit).is_running

    restore()
    yield
    restore()


def main_pid(node, unit) -> int:
    return int(node.run("systemctl show --property=MainPID --value %s", unit).stdout.strip())


def ping(node):
    """What the role does after a start: celery inspect ping, as the service account."""
    return node.run(
        "systemd-run --quiet --wait --pipe --collect --uid=deploykit --gid=deploykit"
        " --property=EnvironmentFile=%s/shared/env %s exec %s celery -A @worker@ inspect ping"
        " --destination=jobs-%s@%s --timeout=5",
        APP,
        HELPER,
        APP,
        live_release(node),
        node.run("hostname").stdout.strip(),
    )


def test_worker_runs_as_the_service_account(node, unit, worker_running):
    service = node.service(unit)
    assert service.is_enabled
    # One instance, the live release's: no other release's is left running or enabled.
    listed = node.run("systemctl list-units --all --plain --no-legend 'jobs-worker@*'").stdout
    assert [line.split()[0] for line in listed.splitlines()] == [unit]
    assert (
        node.run("ls /etc/systemd/system/multi-user.target.wants/").stdout.split().count(unit) == 1
    )
    pid = main_pid(node, unit)
    processes = node.run("ps -o user:32=,args= --ppid %s -p %s", str(pid), str(pid))
    lines = processes.stdout.splitlines()
    assert len(lines) == 2, lines  # the main process and its one pool process (concurrency 1)
    for line in lines:
        user, args = line.split(None, 1)
        assert user == "deploykit"
        assert "celery -A jobs.tasks:celery_app worker --loglevel INFO --concurrency 1" in args
    environ = node.run("tr '\\0' '\\n' < /proc/%s/environ", str(pid)).stdout.splitlines()
    live = live_release(node)
    assert f"DEPLOYKIT_RELEASE_ID={live}" in environ
    assert f"BROKER_URL={BROKER}" in environ


def test_unit_stops_with_a_warm_shutdown_and_is_hardened(node, unit):
    wanted = {**RELEASE_UNIT_SANDBOX, "TimeoutStopUSec": "1min"}
    assert unit_properties(node, unit, wanted) == wanted
    text = node.run("systemctl cat %s", TEMPLATE).stdout
    assert f"EnvironmentFile={APP}/shared/env" in text
    # The instance names the release it runs, and the Celery node name holds it too.
    assert f"ExecStart={HELPER} exec --release %i {APP} celery -A @worker@ worker" in text
    assert "--hostname jobs-%i@%H" in text


def test_env_file_holds_the_contract_settings(node):
    env = node.file(f"{APP}/shared/env")
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    # In root's directory: the service account can neither read the file nor replace it.
    shared = node.file(f"{APP}/shared")
    assert (shared.user, shared.group, shared.mode) == ("root", "root", 0o700)
    assert node.run("runuser -u deploykit -- cat %s/shared/env", APP).rc != 0
    lines = [line for line in env.content_string.splitlines() if line and not line.startswith("#")]
    assert lines == [f'BROKER_URL="{BROKER}"', 'SECRET_KEY="molecule-worker-secret"']


def test_worker_answers_a_ping_through_the_broker(node, worker_running):
    result = ping(node)
    assert result.rc == 0, result.stdout + result.stderr
    assert "pong" in result.stdout


def test_no_port_is_opened(node, worker_running):
    # Every TCP listener is sshd's, RabbitMQ's (5672, 25672, epmd 4369) or Docker's DNS: none is
    # the worker's (ss cannot name processes here: root in the container lacks CAP_SYS_PTRACE).
    listening = {line.split()[3] for line in node.run("ss -Hltn").stdout.splitlines()}
    others = {
        address
        for address in listening
        if address.rsplit(":", 1)[1] not in {"22", "5672", "25672", "4369"}
        and not address.startswith("127.0.0.11:")
    }
    assert others == set(), listening
    assert not node.file("/etc/nftables.d/worker.nft").exists


def test_a_stop_lets_the_running_job_finish(node, unit, worker_running):
    """Celery's warm shutdown: SIGTERM to the main process only; the job it runs finishes first."""
    tag = f"warm-{time.time_ns()}"
    sent = node.run(
        "BROKER_URL=%s %s/current/venv/bin/python -B -c %s",
        BROKER,
        APP,
        f"from jobs.tasks import slow; slow.delay(6, {tag!r})",
    )
    assert sent.rc == 0, sent.stderr
    deadline = time.monotonic() + 20
    while f"slow task {tag} started" not in node.run("journalctl -u %s -o cat", unit).stdout:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.3)
    started = time.monotonic()
    stop = node.run("systemctl stop %s", unit)
    took = time.monotonic() - started
    assert stop.rc == 0, stop.stderr
    # journald takes in the unit's last lines asynchronously: look again for a few seconds.
    finished = f"slow task {tag} finished after 6 s"
    deadline = time.monotonic() + 10
    while finished not in (log := node.run("journalctl -u %s -o cat", unit).stdout):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.3)
    assert took > 3, f"the stop took {took:.1f} s: it did not wait for the job"
    result = node.run("systemctl show --property=Result --value %s", unit).stdout.strip()
    assert result == "success"  # not killed at the timeout


def test_restart_decision_reads_the_running_process(node, unit, worker_running):
    live = live_release(node)
    running = json.loads(
        node.run(
            "%s running %s --file %s/shared/env --file /etc/systemd/system/%s",
            HELPER,
            unit,
            APP,
            TEMPLATE,
        ).stdout
    )
    assert running["release"] == live
    assert running["changed_since"] == []
    node.run("touch %s/shared/env", APP)
    changed = json.loads(node.run("%s running %s --file %s/shared/env", HELPER, unit, APP).stdout)
    assert changed["changed_since"] == [f"{APP}/shared/env"]
    node.run("systemctl restart %s", unit)


def test_the_single_worker_unit_of_earlier_versions_is_stopped_and_gone(node):
    """prepare.yml left jobs-worker.service as an upgraded node has it (enabled, running): the
    first activation of the release's own instance stopped and disabled it and removed its file."""
    assert not node.file("/etc/systemd/system/jobs-worker.service").exists
    # Nothing left loaded: no process, no state, nothing that starts it at boot.
    shown = unit_properties(node, "jobs-worker.service", ["LoadState", "ActiveState", "MainPID"])
    assert shown == {"LoadState": "not-found", "ActiveState": "inactive", "MainPID": "0"}
    assert not node.file("/etc/systemd/system/multi-user.target.wants/jobs-worker.service").exists


def test_application_without_a_worker_gets_nothing(node):
    assert not node.file("/srv/minimal").exists
    assert not node.file("/etc/systemd/system/minimal-worker@.service").exists
