"""Faults injected into the deployed lab: what a user sees, and that nothing is lost.

One test per fault, each on the lab the `shop` fixture deployed (`deploykit up`): a clone killed
under load, a worker killed in the middle of a job, Redis and RabbitMQ restarted, the document
store stopped, the balancer reloaded with a new configuration under load, and a node lost in the
middle of a rolling deploy. Each test puts the lab back the way it found it in a `finally`
(services started, containers unpaused, every clone ready and UP in HAProxy), so that the next
test, and whoever uses the lab after, starts from a healthy stack.

Run with DEPLOYKIT_KEEP_LAB=1 to keep the lab for the next run (the session fixture removes it
otherwise): DEPLOYKIT_KEEP_LAB=1 .venv/bin/pytest tests/e2e/test_faults.py -q -x
"""

from __future__ import annotations

import json
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, LabShell
from loadgen import LoadGenerator, Report, SessionLogin
from shop_traffic import SHOP_USERS_MIX
from shop_user import (
    User,
    assert_sessions_valid,
    jobs,
    logged_in,
    submit_reports,
    wait_done,
    wait_until,
)

from ansible_collections.deploykit.fleet.plugins.module_utils.release import instance_unit
from deploykit import lab
from deploykit.release import artifact_filename

pytestmark = pytest.mark.e2e

APP = "shop"
CLONES = ("app1", "app2", "app3")
BACKEND = "app"
BALANCER = "lb1"
WORKER = "worker1"
# The haproxy role's runtime helper on the balancer (roles/haproxy/files/deploykit-haproxy).
HELPER = "/usr/local/libexec/deploykit-haproxy"
# The RabbitMQ vhost of the application (roles/rabbitmq: rabbitmq_app_vhost) and the shop's queue
# (a quorum queue, examples/shop/src/shop/jobs.py).
VHOST = "app"
JOB_QUEUE = "shop.jobs"

# The load: users on the site, each worker a browser with one keep-alive connection and a session.
CONCURRENCY = 6
RATE = 90.0


def loaded(base_url: str, seed: str) -> LoadGenerator:
    """The load of one test: logged-in users (their own names) on a mix of the shop's pages."""
    return LoadGenerator(
        base_url,
        paths=SHOP_USERS_MIX,
        concurrency=CONCURRENCY,
        rate=RATE,
        session=SessionLogin(body=lambda worker: {"user": f"load-{seed}-{worker}"}),
        seed=seed,
    )


def show(title: str, report: Report) -> None:
    print(f"\n--- {title}\n{report.format_table()}")


# --- the lab -------------------------------------------------------------------------------------


def ssh_argv(lab_up: lab.LabUpResult, host: str) -> list[str]:
    """ssh to HOST as root with the lab's key and known_hosts (as LabShell does), for a command
    that runs in the background."""
    ssh_dir = lab_up.inventory.parent / ".ssh"
    address = next(h.address for h in lab_up.hosts if h.name == host)
    return [
        "ssh", "-i", str(ssh_dir / "id_ed25519"),
        "-o", f"UserKnownHostsFile={ssh_dir / 'known_hosts'}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        f"root@{address}",
    ]  # fmt: skip


def haproxy(shell: LabShell, *args: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(shell.run(BALANCER, shlex.join([HELPER, *args])))
    return answer


def clone_states(shell: LabShell) -> dict[str, dict[str, Any]]:
    servers = haproxy(shell, "servers", "--backend", BACKEND)["servers"]
    return {server["server"]: server for server in servers}


def restore_clones(shell: LabShell) -> None:
    """Every clone's web service running, and its server ready and UP in HAProxy (the helper's
    `ready` returns once HAProxy's own check says UP, through drain when it was in maint)."""
    for clone in CLONES:
        shell.run(clone, f"systemctl start {APP}-web.service")
    for clone in CLONES:
        haproxy(shell, "ready", BACKEND, clone, "--timeout", "60")


def all_clones_up(shell: LabShell) -> bool:
    return all(s["status"] == "UP" and s["admin"] == "ready" for s in clone_states(shell).values())


def wait_stack_healthy(shell: LabShell, base_url: str) -> None:
    """The services every test relies on are running and the balancer sees every clone UP."""
    for host, unit in (
        ("cache1", "redis-server"),
        ("db1", "postgresql@*"),  # the cluster itself, not Debian's umbrella unit
        ("queue1", "rabbitmq-server"),
        (WORKER, worker_unit(shell)),
        *((clone, f"{APP}-web") for clone in CLONES),
    ):
        if not shell.succeeds(host, f"systemctl is-active --quiet '{unit}'"):
            shell.run(host, f"systemctl start {unit.removesuffix('@*')}")
    wait_until("every clone UP in HAProxy", lambda: all_clones_up(shell), timeout=60)
    probe = User(base_url, "probe")
    wait_until("/healthz through the balancer", lambda: probe.get("/healthz").status == 200,
               timeout=30)  # fmt: skip


@pytest.fixture
def site(shop: str, lab_shell: LabShell) -> str:
    """The balancer's URL, once the stack is healthy (a test starts from a healthy lab)."""
    wait_stack_healthy(lab_shell, shop)
    return shop


# --- reports (jobs through the queue) -------------------------------------------------------------


# RabbitMQ counts a quorum queue's messages on the queue's tick (quorum_tick_interval, 5 s by
# default): a count read right after a change can be the one before it. Counts are waited for.
QUORUM_COUNTS_LAG = 5.0


def queue_depth(shell: LabShell) -> tuple[int, int]:
    """(ready, unacknowledged) messages of the shop's queue on the broker, as last counted."""
    listing = json.loads(
        shell.run(
            "queue1",
            f"rabbitmqctl -q list_queues -p {VHOST} name messages_ready messages_unacknowledged "
            "--formatter json",
        )
    )
    row = next((q for q in listing if q["name"] == JOB_QUEUE), None)
    if row is None:  # not listed (yet: a quorum queue right after its node started)
        return -1, -1
    return int(row["messages_ready"] or 0), int(row["messages_unacknowledged"] or 0)


def worker_unit(shell: LabShell, app: str = APP) -> str:
    """The worker's unit of the live release: its instance of the worker role's template."""
    live = shell.run(WORKER, f"readlink /srv/{app}/current").strip().rsplit("/", 1)[-1]
    return instance_unit(f"{app}-worker@.service", live)


def worker_restarts(shell: LabShell) -> int:
    return int(shell.run(WORKER, f"systemctl show -P NRestarts {worker_unit(shell)}"))


# --- 1. a clone killed under load -----------------------------------------------------------------


def test_a_clone_killed_under_load_is_taken_out_then_returns_without_losing_users(
    site: str, lab_shell: LabShell, lab_up: lab.LabUpResult
) -> None:
    users = logged_in(site, "fault1", 6)
    load = loaded(site, "fault1")
    # The balancer's helper follows app2 (a JSON line per change, every 0.1 s) until it was DOWN
    # and is UP again. Its times are the wall clock, which the lab's containers share with the
    # controller (one kernel), so they compare with the moment of the kill taken on the clone.
    poller = subprocess.Popen(
        [*ssh_argv(lab_up, BALANCER),
         shlex.join([HELPER, "watch", BACKEND, "app2", "--timeout", "60", "--until-back"])],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert poller.stdout is not None
        first = json.loads(poller.stdout.readline() or "{}")  # polling has begun
        assert first.get("status") == "UP", f"app2 before the kill: {first}"
        with load:
            load.phase("steady")
            time.sleep(3)
            load.phase("fault")
            killed_at = float(
                lab_shell.run(
                    "app2", f"date +%s.%N; systemctl kill -s KILL {APP}-web.service"
                ).splitlines()[0]
            )
            rest, _ = poller.communicate(timeout=90)
            load.phase("after")
            time.sleep(2)
        samples = [first, *(json.loads(line) for line in rest.splitlines() if line.strip())]
        report = load.report()
        show("a clone killed under load", report)
        print("app2 as HAProxy saw it (s after the kill):")
        for sample in samples:
            print(f"  {sample['t'] - killed_at:+7.2f} {json.dumps(sample)}")
        down = next((s for s in samples if s.get("operational") == "down"), None)
        assert down is not None, f"HAProxy never marked app2 DOWN: {samples}"
        up = next((s for s in samples if s["t"] > down["t"] and s.get("status") == "UP"), None)
        marked_down = down["t"] - killed_at
        print(f"HAProxy marked app2 DOWN {marked_down:.2f} s after the kill")
        # Not a timing test: the check (inter 500 ms, fall 2) takes about a second; bound it only
        # against a clone that is never taken out.
        assert 0 <= marked_down < 10, f"app2 marked DOWN {marked_down:.2f} s after the kill"
        assert up is not None, f"app2 did not come back UP by itself within 60 s: {samples}"
        print(f"app2 back UP {up['t'] - killed_at:.2f} s after the kill (systemd restarted it)")

        # At most the requests in flight at the kill fail: the load has CONCURRENCY of them at
        # most; anything sent after it goes to another clone (HAProxy redispatches refused
        # connections, and stops choosing app2 once it is DOWN).
        kill_offset = killed_at - load.started_at
        in_flight = sum(1 for s in report.samples if s.start <= kill_offset <= s.end)
        failed = [s for s in report.samples if s.failure is not None]
        print(f"requests in flight at the kill: {in_flight}; failed: {len(failed)}")
        for sample in failed:
            print(f"  t={sample.start - kill_offset:+.3f} s {sample.path}: {sample.detail}")
        assert len(failed) <= CONCURRENCY, report.format_table()
        assert "session" not in report.total.failures_by_kind, report.format_table()
        assert report.phase("steady").failures == 0, report.format_table()
        assert report.phase("after").failures == 0, report.format_table()
        # The users logged in before the kill, some of them through app2, are logged in still.
        assert_sessions_valid(users)
    finally:
        if poller.poll() is None:
            poller.kill()
            poller.communicate()
        restore_clones(lab_shell)


# --- 2. a worker killed in the middle of a job -------------------------------------------------


def test_a_worker_killed_mid_job_loses_no_job_and_runs_none_twice(
    site: str, lab_shell: LabShell
) -> None:
    # The shop's report jobs sleep Settings.report_seconds (3 s; no environment variable sets it,
    # and the web side sends it with each job): long enough to kill one mid-job by polling.
    user = User(site, f"fault2-{uuid.uuid4().hex[:6]}").login()
    restarts = worker_restarts(lab_shell)
    ids = submit_reports(user, 5)
    try:
        wait_until(
            "a report job running",
            lambda: any(d["status"] == "running" for d in jobs(user, ids).values()),
            timeout=30,
            every=0.1,
        )
        lab_shell.run(WORKER, f"systemctl kill -s KILL {worker_unit(lab_shell)}")
        # What the kill interrupted: the jobs running now are half done (their worker is gone).
        at_kill = jobs(user, ids)
        interrupted = [i for i, d in at_kill.items() if d["status"] == "running"]
        waiting = [i for i, d in at_kill.items() if d["status"] == "pending"]
        finished = [i for i, d in at_kill.items() if d["status"] == "done"]
        print(
            f"at the kill: {len(interrupted)} running, {len(waiting)} pending, {len(finished)} done"
        )
        assert interrupted, "no job was running at the kill"
        # systemd restarts the worker (Restart=on-failure, RestartSec=5); RabbitMQ put the
        # unacknowledged messages back when the killed worker's connection closed.
        wait_until(
            "systemd restarting the killed worker",
            lambda: (
                worker_restarts(lab_shell) > restarts
                and lab_shell.succeeds(
                    WORKER, f"systemctl is-active --quiet {worker_unit(lab_shell)}"
                )
            ),
            timeout=60,
        )
        done = wait_done(user, ids, timeout=120)
        assert len(done) == len(ids) == len(set(ids))
        for job_id, doc in done.items():
            assert doc["status"] == "done" and doc["result"], (job_id, doc)
        # Each job done exactly once: an interrupted job has one attempt more than at the kill
        # (the one that finished), a pending one a single attempt, a finished one is untouched.
        for job_id in interrupted:
            assert done[job_id]["attempts"] == at_kill[job_id]["attempts"] + 1 >= 2, done[job_id]
        for job_id in waiting:
            assert done[job_id]["attempts"] == 1, done[job_id]
        for job_id in finished:
            assert done[job_id] == at_kill[job_id]
        # Nothing left on the queue or unacknowledged (a late ack follows the job's last write):
        # no message is left that could redo a job; a retry or a redelivery would be one, ready
        # or held unacknowledged. So the jobs stay as they were when done (the empty queue is the
        # signal), and the queue is still empty a count later, after they are read.
        wait_until("an empty queue", lambda: queue_depth(lab_shell) == (0, 0), timeout=20)
        time.sleep(QUORUM_COUNTS_LAG + 1)
        assert jobs(user, ids) == done
        assert queue_depth(lab_shell) == (0, 0), "a message came back after the queue emptied"
        print(
            "attempts: " + ", ".join(f"{job_id[:8]} {done[job_id]['attempts']}" for job_id in ids)
        )
    finally:
        lab_shell.run(WORKER, f"systemctl start {worker_unit(lab_shell)}")


# --- 3. Redis and RabbitMQ restarted -------------------------------------------------------------


def test_sessions_survive_a_redis_restart(site: str, lab_shell: LabShell) -> None:
    users = logged_in(site, "fault3", 5)
    load = loaded(site, "fault3")
    try:
        with load:
            load.phase("steady")
            time.sleep(2)
            load.phase("restart")
            lab_shell.run("cache1", "systemctl restart redis-server")
            time.sleep(3)
        show("Redis restarted under load (figures only)", load.report())
        # Sessions are on disk (AOF): every user is still logged in, those of the load too.
        assert_sessions_valid(users)
        assert "session" not in load.report().total.failures_by_kind, load.report().format_table()
    finally:
        if not lab_shell.succeeds("cache1", "systemctl is-active --quiet redis-server"):
            lab_shell.run("cache1", "systemctl start redis-server")
        restore_clones(lab_shell)


def test_jobs_queued_while_rabbitmq_restarts_are_all_done(site: str, lab_shell: LabShell) -> None:
    user = User(site, f"fault3q-{uuid.uuid4().hex[:6]}").login()
    lab_shell.run(WORKER, f"systemctl stop {worker_unit(lab_shell)}")
    try:
        ids = submit_reports(user, 5)
        five = lambda: queue_depth(lab_shell) == (5, 0)  # noqa: E731
        wait_until("the 5 jobs waiting on the queue", five, timeout=3 * QUORUM_COUNTS_LAG)
        lab_shell.run("queue1", "systemctl restart rabbitmq-server")
        # A durable (quorum) queue, persistent messages: the jobs are still there after the
        # restart (a lost one would keep the count under 5).
        wait_until("the 5 jobs still on the queue", five, timeout=6 * QUORUM_COUNTS_LAG)
        lab_shell.run(WORKER, f"systemctl start {worker_unit(lab_shell)}")
        done = wait_done(user, ids, timeout=90)
        assert all(doc["attempts"] == 1 for doc in done.values()), done
        wait_until("an empty queue", lambda: queue_depth(lab_shell) == (0, 0), timeout=20)
        # The clones publish again once the broker is back (each reconnects on its next job).
        again = [user.post("/reports") for _ in range(3)]
        print("POST /reports after the restart: " + ", ".join(str(a.status) for a in again))
        assert all(a.status == 202 for a in again), [str(a) for a in again]
        wait_done(user, [str(a.json()["job_id"]) for a in again], timeout=60)
    finally:
        if not lab_shell.succeeds("queue1", "systemctl is-active --quiet rabbitmq-server"):
            lab_shell.run("queue1", "systemctl start rabbitmq-server")
        lab_shell.run(WORKER, f"systemctl start {worker_unit(lab_shell)}")


# --- 4. the document store stopped ----------------------------------------------------------------


# Runs on the balancer (the clones' port admits only it): a clone's own answer to PATH.
CLONE_GET = r"""
import json, sys, time, urllib.error, urllib.request
started = time.monotonic()
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
        status, kind, body = answer.status, answer.headers.get_content_type(), answer.read()
except urllib.error.HTTPError as error:
    status, kind, body = error.code, error.headers.get_content_type(), error.read()
print(json.dumps({"status": status, "type": kind, "seconds": time.monotonic() - started,
                  "body": body.decode(errors="replace")}))
"""


def clone_get(shell: LabShell, lab_up: lab.LabUpResult, clone: str, path: str) -> dict[str, Any]:
    address = next(h.address for h in lab_up.hosts if h.name == clone)
    answer: dict[str, Any] = json.loads(
        shell.python(BALANCER, CLONE_GET, f"http://{address}:8000{path}")
    )
    return answer


def stop_docstore(shell: LabShell) -> None:
    # Debian's postgresql.service is an umbrella (ExecStart=/bin/true) that the clusters are
    # PartOf: stopping it alone returns before the cluster is down (a request right after it was
    # still answered from the store). The cluster units are stopped with it, and waited for.
    shell.run("db1", "systemctl stop postgresql 'postgresql@*'")


def start_docstore_and_recover(shell: LabShell, base_url: str) -> float:
    """Start PostgreSQL; the seconds until the app serves documents again by itself."""
    shell.run("db1", "systemctl start postgresql")
    probe = User(base_url, "probe")
    return wait_until(
        "GET /products 200 after PostgreSQL started",
        lambda: probe.get("/products?limit=1").status == 200,
        timeout=60,
        every=0.2,
    )


def test_a_docstore_outage_answers_errors_fast_and_recovers_by_itself(
    site: str, lab_shell: LabShell, lab_up: lab.LabUpResult
) -> None:
    user = User(site, f"fault4-{uuid.uuid4().hex[:6]}").login()
    # A product id that is in no cache (nothing caches a missing product): it needs the store.
    uncached = f"/products/none-{uuid.uuid4().hex[:8]}"
    stop_docstore(lab_shell)
    try:
        time.sleep(2.5)  # a few of HAProxy's checks (inter 500 ms, fall 2) after the stop
        # Through the balancer: the app's own JSON error, fast, on every attempt. The balancer
        # checks the clones' liveness (/livez), not /healthz: an outage every clone shares does
        # not take them all out, so what needs no docstore still works.
        for attempt in range(3):
            for method, path in (("GET", uncached), ("GET", "/products"), ("POST", "/reports")):
                answer = user.request(method, path, {} if method == "POST" else None, timeout=10)
                print(f"{attempt} {method} {path}: {answer}")
                assert answer.status == 503 and answer.is_json, str(answer)
                assert answer.json()["error"], str(answer)
                assert answer.seconds < 10, str(answer)
            time.sleep(0.5)
        me = user.me()  # sessions are in Redis, which is up
        assert me.status == 200, str(me)
        # The baked pages come from the balancer's nginx: no clone, no docstore involved.
        home = user.get("/")
        assert home.status == 200 and b"<html" in home.body.lower(), str(home)
        # Each clone: /healthz says the docstore is failing, and a request that needs it gets
        # the app's own JSON error within its timeouts.
        for clone in CLONES:
            health = clone_get(lab_shell, lab_up, clone, "/healthz")
            checks = json.loads(health["body"])["checks"]
            assert health["status"] == 503 and checks["docstore"] != "ok", health
            assert checks["redis"] == "ok", health
            product = clone_get(lab_shell, lab_up, clone, uncached)
            assert product["status"] == 503 and product["type"] == "application/json", product
            assert json.loads(product["body"])["error"], product
            assert product["seconds"] < 10, product
        # HAProxy kept every clone in: their liveness does not depend on the docstore.
        states = clone_states(lab_shell)
        print({name: (s["status"], s["check_detail"]) for name, s in states.items()})
        assert all(state["status"] == "UP" for state in states.values()), states
    finally:
        recovered = start_docstore_and_recover(lab_shell, site)
        print(f"the app served documents again {recovered:.1f} s after PostgreSQL started")
        restore_clones(lab_shell)
    assert user.get(uncached).status == 404  # and the answer is the right one again
    assert user.post("/reports").status == 202


# --- 5. the balancer reloaded with a new configuration under load ---------------------------------

HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
HAPROXY_BACKUP = "/root/haproxy.cfg.test_faults"


def test_balancer_reloads_under_load_fail_no_request(site: str, lab_shell: LabShell) -> None:
    original_queue = lab_shell.run(BALANCER, f"grep -P '^\\ttimeout queue ' {HAPROXY_CFG}")
    assert original_queue, "no `timeout queue` line in haproxy.cfg"
    lab_shell.run(BALANCER, f"cp -p {HAPROXY_CFG} {HAPROXY_BACKUP}")
    load = loaded(site, "fault5")
    try:
        workers: list[str] = []
        with load:
            load.phase("steady")
            time.sleep(2)
            for reload, value in enumerate(("31s", "32s")):
                # A harmless change: how long a request may wait for a free server.
                lab_shell.run(
                    BALANCER,
                    f"sed -i 's/^\\ttimeout queue .*/\\ttimeout queue {value}/' {HAPROXY_CFG} && "
                    f"grep -qP '^\\ttimeout queue {value}$' {HAPROXY_CFG} && "
                    f"haproxy -c -q -f {HAPROXY_CFG}",
                )
                load.phase(f"reload {reload + 1}")
                lab_shell.run(BALANCER, "systemctl reload haproxy")
                time.sleep(3)
                workers.append(lab_shell.run(BALANCER, "pgrep -d, -x -P $(systemctl show -P "
                                             "MainPID haproxy) haproxy"))  # fmt: skip
            load.phase("after")
            time.sleep(2)
        report = load.report()
        show("two reloads of HAProxy under load", report)
        print(f"HAProxy worker process after each reload: {workers}")
        assert workers[0] != workers[1], "the second reload started no new worker"
        assert report.failures == 0, report.format_table()
        assert report.total.requests > 100
        assert all_clones_up(lab_shell), clone_states(lab_shell)
    finally:
        lab_shell.run(
            BALANCER,
            f"cp -p {HAPROXY_BACKUP} {HAPROXY_CFG} && haproxy -c -q -f {HAPROXY_CFG} && "
            f"systemctl reload haproxy && rm -f {HAPROXY_BACKUP}",
        )
        restore_clones(lab_shell)
    assert lab_shell.run(BALANCER, f"grep -P '^\\ttimeout queue ' {HAPROXY_CFG}") == original_queue


# --- 6. a node unreachable in the middle of a rolling deploy --------------------------------------


def deploykit(
    *args: str, timeout: float = 900, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, env=env,
    )  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines, proc.stderr


def status_report() -> dict[str, Any]:
    rc, lines, stderr = deploykit("status", "--json", timeout=300)
    assert rc == 0 and lines, stderr[-3000:]
    return lines[-1]


def clone_releases(report: dict[str, Any]) -> dict[str, str | None]:
    return {n["host"]: n["release"] for n in report["nodes"] if n["role"] == "app"}


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_a_node_lost_mid_deploy_is_named_and_the_touched_clones_return(
    site: str, lab_shell: LabShell, tmp_path: Path
) -> None:
    before = status_report()
    previous = before["live"]
    assert previous and before["drift"] is False, before
    version = f"9.0.0-faults{time.strftime('%H%M%S')}"
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", "build", "--app", str(ROOT / "examples" / APP),
         "--version", version, "--out", str(tmp_path), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifact = json.loads(proc.stdout)
    assert artifact["release_id"] != previous

    # ansible.cfg's SSH settings as they are: a paused host is found unreachable after about a
    # minute (the ControlPersist master gives up after ServerAliveInterval 15 s x 3, then a new
    # connection times out in the banner exchange after Ansible's default timeout, 10 s).
    deploy = subprocess.Popen(
        [sys.executable, "-m", "deploykit", "deploy", "--artifact", artifact["path"],
         "--batch", "1", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert deploy.stdout is not None
        for line in deploy.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    events: list[dict[str, Any]] = []
    paused_at: float | None = None
    try:
        deadline = time.monotonic() + 900
        while True:
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None:
                break
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            events.append(event)
            step = (event.get("event"), event.get("host"), event.get("step"))
            if paused_at is None and step == ("step", "app2", "done"):
                paused = docker("pause", f"{lab.CONTAINER_PREFIX}app3")
                assert paused.returncode == 0, paused.stderr
                paused_at = time.monotonic()
                print("app3 paused once app2 was done")
        rc = deploy.wait(timeout=60)
        ended_after = time.monotonic() - (paused_at or time.monotonic())
    finally:
        if deploy.poll() is None:
            deploy.kill()
        stderr = deploy.stderr.read() if deploy.stderr else ""
        if paused_at is not None:
            unpaused = docker("unpause", f"{lab.CONTAINER_PREFIX}app3")
            assert unpaused.returncode == 0, unpaused.stderr
    steps = [(e["host"], e["step"]) for e in events if e.get("event") == "step"]
    print(f"steps: {steps}")
    print(f"the deploy ended {ended_after:.1f} s after app3 was paused, exit {rc}")
    assert paused_at is not None, f"app2 never reported done: {steps}\n{stderr[-3000:]}"
    summary = events[-1]
    print(json.dumps(summary, indent=1))
    try:
        assert rc == 1, (summary, stderr[-3000:])
        assert summary["event"] == "deploy"
        assert "app3" in summary["failure"] and "unreachable" in summary["failure"], summary
        nodes = summary["nodes"]
        assert nodes["app1/app"]["outcome"] == "rolled_back", nodes
        assert nodes["app2/app"]["outcome"] == "rolled_back", nodes
        after = status_report()
        releases = clone_releases(after)
        print(f"after the failed deploy: {releases}")
        assert releases["app1"] == releases["app2"] == previous, releases
    finally:
        # app3 may be drained, in maint or on either release: return every clone to the
        # release that was live, in service.
        rc_back, back, back_err = deploykit("rollback", "--to", previous, "--json", timeout=900)
        print(f"rollback --to {previous}: exit {rc_back}: {back[-1] if back else back_err[-2000:]}")
        restore_clones(lab_shell)
    assert rc_back == 0, back_err[-3000:]
    final = status_report()
    assert set(clone_releases(final).values()) == {previous}, final
    assert final["drift"] is False, final
    assert {n["haproxy"] for n in final["nodes"] if n["role"] == "app"} == {"UP"}, final
    # Workers switch after every clone, and a failed batch stops the rollout: the worker and the
    # balancer's pages should never have left the previous release.
    went_on = {
        key: node["outcome"]
        for key, node in nodes.items()
        if key in ("worker1/worker", "lb1/lb") and node["outcome"] != "untouched"
    }
    assert not went_on, f"roll.yml went on past the unreachable clone: {went_on}"


# --- 7. another application deployed onto the fleet -----------------------------------------------

# A second application, written only to the contract (tests/fixtures/minimal_app): its own name,
# health path and settings; its gunicorn would bind the port the shop's holds.
FOREIGN_APP = ROOT / "tests" / "fixtures" / "minimal_app"
FOREIGN = "minimal"


def test_another_application_is_refused_before_anything_changes(
    site: str, lab_shell: LabShell, tmp_path: Path
) -> None:
    before = status_report()
    assert before["live"] and before["drift"] is False, before
    artifact = build_minimal(tmp_path, "foreign")
    load = loaded(site, "foreign")
    with load:
        load.phase("foreign deploy")
        rc, lines, stderr = deploykit("deploy", "--artifact", artifact["path"], "--json")
        load.phase("after")
        time.sleep(2)
    report = load.report()
    show("a foreign application's deploy under load", report)
    assert rc == 2, (lines, stderr[-3000:])
    refusal = lines[-1]
    print(json.dumps(refusal, indent=1))
    assert refusal["outcome"] == "refused", refusal
    assert f"the fleet serves {APP}, not {FOREIGN}" in refusal["message"], refusal
    assert "nothing was changed" in refusal["message"], refusal
    assert report.failures == 0, report.format_table()
    # Nothing of the foreign application reached a clone: no release, no unit, nothing looping.
    for clone in CLONES:
        left = lab_shell.run(
            clone,
            f"ls -d /srv/{FOREIGN} /etc/systemd/system/{FOREIGN}-web.service 2>/dev/null; "
            f"systemctl list-units --all --plain --no-legend '{FOREIGN}-*' || true",
        )
        assert left == "", f"{clone}: {left}"
    after = status_report()
    assert clone_releases(after) == clone_releases(before), after
    assert {n["haproxy"] for n in after["nodes"] if n["role"] == "app"} == {"UP"}, after
    assert all_clones_up(lab_shell), clone_states(lab_shell)
    # The attempt is in the history, as refused, and the lock is free for the next deploy.
    rc, history, stderr = deploykit("releases", "--json", timeout=300)
    assert rc == 0 and history, stderr[-3000:]
    last = history[-1]["records"][-1]
    assert (last["action"], last["outcome"], last["app"]) == ("deploy", "refused", FOREIGN), last
    rc, lock, stderr = deploykit("lock", "status", "--json", timeout=300)
    assert rc == 0 and lock and lock[-1].get("held") is False, (lock, stderr[-2000:])


def build_minimal(tmp_path: Path, name: str, *, broken: bool = False) -> dict[str, Any]:
    """A release of the fixture app; broken: its health path answers 500 (never ready)."""
    source = FOREIGN_APP
    if broken:
        source = tmp_path / f"{name}-src"
        shutil.copytree(FOREIGN_APP, source)
        web = source / "src" / "minimal" / "web.py"
        code = web.read_text()
        healthy = 'return (200 if healthy else 503), {"release": release_id(), "checks": checks}'
        assert healthy in code, "the fixture's health answer changed: update build_minimal"
        web.write_text(code.replace(healthy, 'return 500, {"release": release_id()}'))
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", "build", "--app", str(source),
         "--version", f"0.1.0-{name}{time.strftime('%H%M%S')}", "--out", str(tmp_path), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    built: dict[str, Any] = json.loads(proc.stdout)
    return built


def units_of(lab_shell: LabShell, host: str, app: str) -> dict[str, list[str]]:
    """{unit: [ActiveState, UnitFileState]} of APP's units on HOST (installed ones only)."""
    found: dict[str, list[str]] = {}
    for unit in (f"{app}-web.service", f"{app}-worker@.service"):
        if not lab_shell.succeeds(host, f"test -f /etc/systemd/system/{unit}"):
            found[unit] = []
        elif unit.endswith("@.service"):
            # The worker's template: "active" when an instance (any release's) runs, "enabled"
            # when one would start at boot.
            prefix = unit.removesuffix(".service")
            listed = lab_shell.run(
                host, f"systemctl list-units --all --plain --no-legend '{prefix}*.service'"
            )
            states = {line.split()[2] for line in listed.splitlines() if line.strip()}
            wants = lab_shell.succeeds(host, f"ls /etc/systemd/system/*.wants/{prefix}*.service")
            found[unit] = [
                "active" if states - {"inactive", "failed"} else "inactive",
                "enabled" if wants else "disabled",
            ]
        else:
            shown = lab_shell.run(host, f"systemctl show -P ActiveState -P UnitFileState {unit}")
            found[unit] = shown.split()
    return found


def test_replace_moves_the_fleet_to_another_application_and_back_without_a_failed_request(
    site: str, lab_shell: LabShell, tmp_path: Path
) -> None:
    """deploy --replace under load, on paths both applications answer (HAProxy's check path
    /livez, the health path, the baked home page): a replacement whose health fails is returned
    to the shop on the canary; a good one takes every clone, the worker's shop unit is retired
    and the balancer serves its pages; the shop's release then replaces it again."""
    before = status_report()
    live = before["live"]
    assert live and before["drift"] is False, before
    shop_artifact = ROOT / ".cache" / "artifacts" / artifact_filename(APP, live)
    assert shop_artifact.is_file(), f"the live release's artifact is not in {shop_artifact.parent}"
    broken = build_minimal(tmp_path, "broken", broken=True)
    good = build_minimal(tmp_path, "good")
    load = LoadGenerator(
        site, paths=[("/livez", 1), ("/healthz", 1), ("/", 1)], concurrency=6, rate=60,
        seed="replace",
    )  # fmt: skip
    with load:
        load.phase("steady")
        time.sleep(3)
        load.phase("replace: broken")
        rc_broken, broken_lines, broken_err = deploykit(
            "deploy", "--artifact", broken["path"], "--replace", APP, "--health-timeout", "15",
            "--json",
        )  # fmt: skip
        load.phase("replace: good")
        rc_good, good_lines, good_err = deploykit(
            "deploy", "--artifact", good["path"], "--replace", APP, "--json"
        )
        load.phase("replaced")
        time.sleep(2)
        replaced = status_report()
        with urllib.request.urlopen(f"{site}/", timeout=10) as answer:
            home = answer.read().decode()
        worker_units = units_of(lab_shell, WORKER, APP)
        clone_units = {clone: units_of(lab_shell, clone, APP) for clone in CLONES}
        load.phase("replace back")
        rc_back, back_lines, back_err = deploykit(
            "deploy", "--artifact", str(shop_artifact), "--replace", FOREIGN, "--json"
        )
        load.phase("after")
        time.sleep(2)
    report = load.report()
    show("deploy --replace under load: broken, good, back to the shop", report)
    # 1. The broken replacement: refused by the canary's health gate, returned to the shop.
    assert rc_broken == 1, (broken_lines[-1:], broken_err[-3000:])
    summary = broken_lines[-1]
    assert (summary["outcome"], summary["replaced"]) == ("rolled_back", APP), summary
    canary = [key for key, node in summary["nodes"].items() if node["outcome"] == "rolled_back"]
    assert len(canary) == 1, summary["nodes"]
    # 2. The good one: every clone serves it, the shop's units are stopped and disabled.
    assert rc_good == 0, (good_lines[-1:], good_err[-3000:])
    assert (good_lines[-1]["outcome"], good_lines[-1]["replaced"]) == ("succeeded", APP)
    assert replaced["app"] == FOREIGN, replaced
    assert replaced["live"] == good["release_id"] and replaced["drift"] is False, replaced
    assert {n["haproxy"] for n in replaced["nodes"] if n["role"] == "app"} == {"UP"}, replaced
    assert f"release {good['release_id']}" in home, home
    for clone, units in clone_units.items():
        assert units[f"{APP}-web.service"] == ["inactive", "disabled"], (clone, units)
    assert worker_units[f"{APP}-worker@.service"] == ["inactive", "disabled"], worker_units
    # 3. And back: the shop's release serves everywhere again, nothing of minimal runs.
    assert rc_back == 0, (back_lines[-1:], back_err[-3000:])
    after = status_report()
    assert after["app"] == APP and after["live"] == live and after["drift"] is False, after
    assert {n["haproxy"] for n in after["nodes"] if n["role"] == "app"} == {"UP"}, after
    for clone in CLONES:
        units = units_of(lab_shell, clone, FOREIGN)
        assert units[f"{FOREIGN}-web.service"] == ["inactive", "disabled"], (clone, units)
    assert all_clones_up(lab_shell), clone_states(lab_shell)
    # Under load through all three: no request failed.
    assert report.total.requests > 300, report.format_table()
    assert report.failures == 0, report.format_table()


def test_a_unit_left_restarting_blocks_rollouts_until_it_is_retired(
    site: str, lab_shell: LabShell
) -> None:
    """What a failed first deploy of another application used to leave: its unit enabled, in a
    restart loop, waiting to take the port. Rollouts see it and refuse; the activate module's
    `retired` state (what the return runs on such a node) stops and disables it."""
    live = status_report()["live"]
    assert live, "the shop is not live on every clone"
    unit = "loopy-web.service"
    lab_shell.run(
        "app1",
        f"printf '%s\\n' '[Unit]' 'Description=loopy web (gunicorn, deploykit)' '[Service]' "
        f"'ExecStart=/usr/local/libexec/deploykit-release exec /srv/loopy gunicorn @wsgi@' "
        f"'Restart=always' 'RestartSec=1' '[Install]' 'WantedBy=multi-user.target' "
        f"> /etc/systemd/system/{unit} && "
        f"systemctl daemon-reload && systemctl enable --now {unit}",
    )
    try:
        rc, lines, stderr = deploykit("rollback", "--to", live, "--json")
        assert rc == 2, (lines, stderr[-3000:])
        assert f"{unit} on app1" in lines[-1]["message"], lines[-1]
        proc = subprocess.run(
            ["ansible", "app1", "-m", "deploykit.fleet.activate",
             "-a", f"app_root=/srv/loopy unit={unit} state=retired stop_timeout=5"],
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert "CHANGED" in proc.stdout, proc.stdout[-2000:]
        state = lab_shell.run(
            "app1", f"systemctl show -P ActiveState -P UnitFileState {unit}"
        ).split()
        assert state == ["inactive", "disabled"], state
        # A retired unit serves nothing: rollouts go on.
        rc, lines, stderr = deploykit("rollback", "--to", live, "--json")
        assert rc == 0, (lines, stderr[-3000:])
        assert lines[-1]["outcome"] == "unchanged", lines[-1]
    finally:
        lab_shell.run(
            "app1",
            f"systemctl disable --now {unit} 2>/dev/null; rm -f /etc/systemd/system/{unit}; "
            "systemctl daemon-reload; systemctl reset-failed",
        )


# --- 8. a clone's whole host lost under load ------------------------------------------------------


def test_a_clone_host_lost_under_load_costs_no_get_but_answers_already_on_the_wire(
    site: str, lab_shell: LabShell
) -> None:
    """A power cut, not a crash: the clone's container loses its network, then is killed, so no
    RST ever answers for it. HAProxy must take every GET elsewhere: those in
    flight on the lost clone (no answer within haproxy_timeout_idempotent: retried on another
    clone), those sent on its idle connections, and new ones (no connection within
    haproxy_timeout_connect: redispatched)."""
    container = f"{lab.CONTAINER_PREFIX}app2"
    load = LoadGenerator(site, paths=[("/products?limit=20", 1)], concurrency=16, seed="hostloss")
    cut_at = 0.0
    # The lab's containers come back by themselves (restart unless-stopped): not this one, until
    # the test says so.
    assert docker("update", "--restart=no", container).returncode == 0
    killed_at = None
    try:
        with load:
            load.phase("steady")
            time.sleep(5)
            load.phase("host lost")
            # The network goes first, then the processes: a kill alone lets the kernel close
            # their sockets with an RST while the namespace still has its link.
            cut_at = time.monotonic() - load.started
            cut = docker("network", "disconnect", "--force", lab.NETWORK_NAME, container)
            killed = docker("kill", "--signal=KILL", container)
            killed_at = time.monotonic()
            assert cut.returncode == 0 and killed.returncode == 0, cut.stderr + killed.stderr
            down = wait_until(
                "HAProxy marks app2 DOWN",
                lambda: clone_states(lab_shell)["app2"]["status"] == "DOWN",
                timeout=30,
                every=0.2,
            )
            print(f"app2's host lost: HAProxy marked it DOWN after {down:.1f} s")
            time.sleep(5)
            load.phase("after")
            time.sleep(3)
        report = load.report()
        show("a clone's host lost under load (16 connections, GET /products)", report)
        assert report.total.requests > 200, report.format_table()
        # Every request here is a GET: HAProxy retries on another clone those whose connection
        # failed or whose answer did not begin. Only an answer already on the wire at the cut (its
        # headers forwarded, its body lost: "connection closed mid-answer") cannot be retried: a
        # failure is allowed only for a request sent before the network was gone, cut mid-answer.
        cut_done = killed_at - load.started
        late = [
            f"{s.start - cut_at:+.3f} s {s.failure}: {s.detail}"
            for s in report.samples
            if s.failure is not None and (s.start > cut_done or s.failure != "socket")
        ]
        assert not late, (late, report.format_table())
    finally:
        if killed_at is not None:
            address = lab_shell.addresses["app2"]
            docker("network", "connect", "--ip", address, lab.NETWORK_NAME, container)
            started = docker("start", container)
            assert started.returncode == 0, started.stderr
        docker("update", "--restart=unless-stopped", container)
        wait_until("app2 answers over SSH", lambda: lab_shell.succeeds("app2", "true"),
                   timeout=120, every=1)  # fmt: skip
        restore_clones(lab_shell)
    assert all_clones_up(lab_shell), clone_states(lab_shell)
