"""Testinfra checks of the app role (with deploy.yml, the static and worker roles), run by the
molecule scenario ``app``.

The scenario has three hosts:

* ``app-lb`` (lb): HAProxy (the haproxy role, its static backend on port 8081) and the static
  role (nginx on 127.0.0.1:8081 with the release's baked pages);
* ``app-web`` (app): gunicorn serving tests/fixtures/minimal_app, deployed by playbooks/deploy.yml
  (release A live; release B staged by the app role with app_switch false);
* ``app-other`` (worker): the worker role ran (the minimal app has no worker: it did nothing); the
  host the app's port is not admitted from.

Every request is made from another container. Changes of state (a switch, a stopped app) are
undone by fixtures, whatever the outcome of the test.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from lab_probes import (
    RELEASE_UNIT_SANDBOX,
    http_request,
    installed_distributions,
    ipv4,
    knock,
    only_in_scenario,
    scenario_hosts,
    unit_properties,
)

SCENARIO = "app"

pytestmark = only_in_scenario(SCENARIO)

ROOT_DIR = Path(__file__).resolve().parents[2]
SETTINGS = yaml.safe_load((ROOT_DIR / "molecule/app/group_vars/all.yml").read_text())
SECRET = SETTINGS["app_secret_key"]

LB, WEB, OTHER = "app-lb", "app-web", "app-other"
APP = "/srv/minimal"
UNIT = "minimal-web.service"
PORT = 8000
HELPER = "/usr/local/libexec/deploykit-release"


@pytest.fixture(scope="module")
def lab(request):
    return scenario_hosts(request, LB, WEB, OTHER)


def main_pid(web) -> int:
    return int(web.run("systemctl show --property=MainPID --value %s", UNIT).stdout.strip())


def worker_pids(web) -> set[int]:
    """The web unit's gunicorn workers: the children of its master."""
    found = web.run("pgrep -P %s", str(main_pid(web)))
    return {int(pid) for pid in found.stdout.split()}


def environ(web, pid: int) -> dict[str, str]:
    raw = web.run("cat /proc/%s/environ | base64 -w0", str(pid)).stdout
    entries = base64.b64decode(raw).split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)


def wait_for_health(client, lb_address: str, release: str, deadline: float = 30.0) -> dict:
    """Poll /healthz through HAProxy until it reports `release` (and 200)."""
    end = time.monotonic() + deadline
    while True:
        answer = http_request(client, f"http://{lb_address}/healthz")
        if answer.get("status") == 200 and json.loads(answer["body"]).get("release") == release:
            return answer
        if time.monotonic() > end:
            raise AssertionError(f"/healthz never reported {release}: {answer}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def releases(lab) -> dict[str, str]:
    web = lab[WEB]
    live = web.file(f"{APP}/current").linked_to.rsplit("/", 1)[1]
    names = web.run("ls -1 %s/releases", APP).stdout.split()
    others = [name for name in names if name != live]
    assert len(others) == 1, names
    return {"A": live, "B": others[0]}


@pytest.fixture(scope="module")
def lb_address(lab) -> str:
    return ipv4(lab[LB])


def switch(web, release: str) -> None:
    """What the release role's switch entry point does: a new link, renamed over current."""
    result = web.run(
        "ln -sfn releases/%s %s/.current.switching && mv -T %s/.current.switching %s/current",
        release,
        APP,
        APP,
        APP,
    )
    assert result.rc == 0, result.stderr


@pytest.fixture
def release_a_live(lab, lb_address, releases):
    """Release A live and healthy before and after the test, whatever happened."""

    def restore():
        web = lab[WEB]
        if web.file(f"{APP}/current").linked_to.rsplit("/", 1)[1] != releases["A"] or not (
            web.service(UNIT).is_running
        ):
            switch(web, releases["A"])
            web.run("systemctl restart %s", UNIT)
        wait_for_health(lab[OTHER], lb_address, releases["A"])

    restore()
    yield
    restore()


# --- the layout and the settings -------------------------------------------------------------


def test_releases(releases):
    assert releases["A"].startswith("0.1.0-")
    assert releases["B"].startswith("0.2.0-")


def test_layout(lab, releases):
    web = lab[WEB]
    assert web.run("readlink %s/current", APP).stdout.strip() == f"releases/{releases['A']}"
    for release in releases.values():
        assert web.file(f"{APP}/releases/{release}/venv/bin/gunicorn").is_file
    shared = web.file(f"{APP}/shared")
    assert (shared.user, shared.group, shared.mode) == ("root", "root", 0o700)


def test_env_file_holds_only_the_contract_settings(lab):
    env = lab[WEB].file(f"{APP}/shared/env")
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    lines = [line for line in env.content_string.splitlines() if line and not line.startswith("#")]
    # The minimal app's contract lists SECRET_KEY only: no REDIS_URL (set in the inventory), and
    # no DEPLOYKIT_RELEASE_ID (the unit sets it from the release it runs).
    assert [line.split("=", 1)[0] for line in lines] == ["SECRET_KEY"]
    # A shell reads it as systemd does.
    value = lab[WEB].run("sh -c 'set -a; . %s/shared/env; printf %%s \"$SECRET_KEY\"'", APP)
    assert value.stdout == SECRET


def test_the_service_account_can_neither_read_nor_replace_the_settings(lab):
    """systemd (PID 1) reads the settings for the units; the service account cannot read them,
    nor put a file of its own in their place: the file and every directory above it are root's
    and writable by root only (a directory it could write would let it rename its own file over
    root's, which the next start, or a root shell reading it, would then trust)."""
    web = lab[WEB]
    path = f"{APP}/shared/env"
    parts = path.strip("/").split("/")
    for depth in range(len(parts)):
        directory = web.file("/" + "/".join(parts[:depth]))
        assert directory.user == "root", directory.path
        assert directory.mode & 0o022 == 0, (directory.path, oct(directory.mode))
    as_service = "runuser -u deploykit -- sh -c %s"
    for attempt in [
        f"cat {path}",
        f"echo 'SECRET_KEY=planted' > {path}",
        f"echo 'SECRET_KEY=planted' > {APP}/shared/planted",
        f"echo 'SECRET_KEY=planted' > /tmp/planted && mv -f /tmp/planted {path}",
        f"ln -sf /tmp/planted {path}",
        f"mv {APP}/shared {APP}/shared.old",
    ]:
        result = web.run(as_service, attempt)
        assert result.rc != 0, (attempt, result.stdout)
    assert not web.file(f"{APP}/shared/planted").exists
    env = web.file(path)
    assert (env.user, env.mode, env.is_symlink) == ("root", 0o600, False)
    assert "planted" not in env.content_string


def test_the_migration_ran_as_the_service_account_started_by_systemd(lab, releases):
    """deploy.yml ran release A's migration (minimal.migrate:migrate, which reports itself to the
    journal) once, before the clone switched: as the service account, in a transient unit started
    by systemd (its parent is PID 1: no root shell ran it, or read the settings for it), with the
    settings (SECRET_KEY set: systemd read the root-only file) and the release's id."""
    web = lab[WEB]
    uid = int(web.run("id -u deploykit").stdout)
    gid = int(web.run("id -g deploykit").stdout)
    lines = web.run("journalctl --no-pager -o json SYSLOG_IDENTIFIER=minimal-migrate").stdout
    entries = [json.loads(line) for line in lines.splitlines() if line.strip()]
    assert entries, "the migration never reported: it did not run"
    # PID 1's own record of the transient unit it started for the migration (stamped _PID=1).
    started = web.run("journalctl --no-pager -o json _PID=1 JOB_TYPE=start JOB_RESULT=done").stdout
    transient = [
        record["UNIT"]
        for record in map(json.loads, filter(str.strip, started.splitlines()))
        if record.get("UNIT", "").startswith("run-")
        and f"migration, release {releases['A']}" in record.get("MESSAGE", "")
    ]
    assert len(transient) == 1, f"systemd's record of the migration's unit: {transient}"
    for entry in entries:
        # Stamped by journald from the sending process's credentials, not claimed by it.
        assert int(entry["_UID"]) == uid, entry
        # journald names the unit from the sender's cgroup, which it can read only while the
        # sender lives: a migration that exits at once under load leaves the field out.
        assert entry.get("_SYSTEMD_UNIT", transient[0]) == transient[0], entry
        report = json.loads(entry["MESSAGE"])
        assert report == {
            "uid": uid,
            "euid": uid,
            "gid": gid,
            "ppid": 1,
            "parent": "systemd",
            "cwd": f"{APP}/releases/{releases['A']}",
            "release": releases["A"],
            "secret_key_set": True,
        }, report
    # deploy.yml ran it once (the idempotence run found release A live: no second run).
    assert len(entries) == 1, entries


def test_process_environment(lab, releases, release_a_live):
    web = lab[WEB]
    env = environ(web, main_pid(web))
    assert env["SECRET_KEY"] == SECRET
    assert env["DEPLOYKIT_RELEASE_ID"] == releases["A"]
    assert "REDIS_URL" not in env


def test_offline_virtualenv(lab, releases):
    web = lab[WEB]
    venv = f"{APP}/releases/{releases['A']}/venv"
    assert "installed offline" in web.file(f"{venv}/.deploykit-complete").content_string
    # Exactly the wheels of the release's wheelhouse are installed, but pypa/installer, which the
    # build ships for the stage, and no pip.
    assert not web.file(f"{venv}/bin/pip").exists
    wheels = web.run("ls -1 %s/releases/%s/wheelhouse", APP, releases["A"]).stdout.split()
    names = {w.split("-")[0].lower().replace("_", "-") for w in wheels}
    assert "installer" in names, names
    assert names - {"installer"} == set(installed_distributions(web, venv))


# --- gunicorn under systemd -------------------------------------------------------------------


def test_gunicorn_runs_as_the_service_account(lab, release_a_live):
    web = lab[WEB]
    service = web.service(UNIT)
    assert service.is_running
    assert service.is_enabled
    pid = main_pid(web)
    processes = web.run(
        "ps -o user:32=,args= --ppid %s -p %s", str(pid), str(pid)
    ).stdout.splitlines()
    assert len(processes) == 3, processes  # the master and its 2 workers
    for line in processes:
        user, args = line.split(None, 1)
        assert user == "deploykit", line
        assert "gunicorn --bind 172.30.107.11:8000 --workers 2 --graceful-timeout 30" in args, line
        assert args.endswith(" minimal.web:app"), line  # @wsgi@, from the release's manifest


def test_unit_settings_and_hardening(lab):
    web = lab[WEB]
    wanted = {
        **RELEASE_UNIT_SANDBOX,
        "Group": "deploykit",
        "Type": "notify",
    }
    assert unit_properties(web, UNIT, wanted) == wanted
    unit = web.run("systemctl cat %s", UNIT).stdout
    assert "ExecReload=/bin/kill -s HUP $MAINPID" in unit
    assert f"EnvironmentFile={APP}/shared/env" in unit
    assert f"ExecStart={HELPER} exec {APP} gunicorn " in unit
    assert f"ReadOnlyPaths={APP}" in unit


def test_hardening_is_in_effect(lab, release_a_live):
    web = lab[WEB]
    pid = str(main_pid(web))
    status = web.file(f"/proc/{pid}/status").content_string
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["CapBnd"].strip() == "0000000000000000"
    mounts = web.run("cat /proc/%s/mountinfo", pid).stdout.splitlines()

    def options(mount_point: str) -> list[str]:
        found = [line.split()[5].split(",") for line in mounts if line.split()[4] == mount_point]
        assert found, f"{mount_point} is not a mount point of the service"
        return found[-1]

    assert "ro" in options("/")  # ProtectSystem=strict (and ReadOnlyPaths=/srv/minimal)
    assert "rw" in options("/tmp")  # PrivateTmp: its own, writable /tmp
    # Nothing under / is mounted writable for it but its private /tmp, /dev/shm and the runtime
    # directory: not the release, not the service account's home. (/run and /run/lock are tmpfs
    # mounts of the lab's container engine, root's own: ProtectSystem leaves them as they are.)
    writable = sorted(line.split()[4] for line in mounts if "rw" in line.split()[5].split(","))
    for mount_point in writable:
        assert mount_point in (
            "/tmp",
            "/var/tmp",
            "/run",
            "/run/lock",
            "/run/minimal-web",
        ) or mount_point.startswith(
            ("/dev", "/proc", "/sys", "/run/systemd", "/run/credentials")
        ), (mount_point, writable)
    home = web.run("getent passwd deploykit").stdout.split(":")[5]
    assert not [m for m in writable if m.startswith((APP, home, "/srv", "/var/lib"))], writable


def test_gunicorn_listens_on_the_private_address_only(lab):
    web = lab[WEB]
    listening = [line.split()[3] for line in web.run("ss -Hltn").stdout.splitlines()]
    assert f"{ipv4(web)}:{PORT}" in listening
    assert f"0.0.0.0:{PORT}" not in listening and f"[::]:{PORT}" not in listening


def test_app_port_admitted_from_the_balancer_only(lab, release_a_live):
    target = ipv4(lab[WEB])
    assert knock(lab[LB], target, PORT) == "open"
    assert knock(lab[OTHER], target, PORT) == "timeout"


# --- through the balancer -----------------------------------------------------------------


def test_health_through_haproxy_reports_the_release(lab, lb_address, releases, release_a_live):
    answer = http_request(lab[OTHER], f"http://{lb_address}/healthz")
    assert answer["status"] == 200, answer
    assert answer["headers"]["x-served-by"] == WEB
    assert json.loads(answer["body"]) == {"release": releases["A"], "checks": {"settings": "ok"}}


def test_a_switch_and_a_restart_report_the_new_release(lab, lb_address, releases, release_a_live):
    """The unit reads the release id from `current` when it starts: switch, restart, and /healthz
    reports B; switch back, restart, and it reports A. A reload (HUP) keeps the running release."""
    web = lab[WEB]
    switch(web, releases["B"])
    # Not restarted yet: still A.
    assert (
        json.loads(http_request(lab[OTHER], f"http://{lb_address}/healthz")["body"])["release"]
        == (releases["A"])
    )
    running = json.loads(web.run("%s running %s", HELPER, UNIT).stdout)
    assert running["release"] == releases["A"]
    # A reload starts new workers in the same master: still A. The new workers, not a fixed
    # pause, say that the reload has taken effect before /healthz is asked again.
    master, workers = main_pid(web), worker_pids(web)
    assert workers, f"gunicorn {master} has no worker"
    assert web.run("systemctl reload %s", UNIT).rc == 0
    started, deadline = time.monotonic(), time.monotonic() + 30
    while (now := worker_pids(web)) & workers or len(now) != len(workers):
        assert time.monotonic() < deadline, (
            f"the reload's new workers: {sorted(now)} after {time.monotonic() - started:.0f} s "
            f"(old: {sorted(workers)})"
        )
        time.sleep(0.5)
    assert main_pid(web) == master, "the reload replaced gunicorn's master"
    assert (
        json.loads(http_request(lab[OTHER], f"http://{lb_address}/healthz")["body"])["release"]
        == (releases["A"])
    )
    assert web.run("systemctl restart %s", UNIT).rc == 0
    wait_for_health(lab[OTHER], lb_address, releases["B"])
    assert environ(web, main_pid(web))["DEPLOYKIT_RELEASE_ID"] == releases["B"]
    switch(web, releases["A"])
    assert web.run("systemctl restart %s", UNIT).rc == 0
    wait_for_health(lab[OTHER], lb_address, releases["A"])


def test_baked_page_served_with_every_app_clone_stopped(lab, lb_address, releases, release_a_live):
    client, web = lab[OTHER], lab[WEB]
    baked = web.file(f"{APP}/releases/{releases['A']}/baked/index.html").content_string
    for path in ("/", "/index.html"):
        answer = http_request(client, f"http://{lb_address}{path}")
        assert answer["status"] == 200, answer
        assert answer["headers"]["x-served-by"] == "static"
        assert answer["body"] == baked
    assert web.run("systemctl stop %s", UNIT).rc == 0
    deadline = time.monotonic() + 10
    while http_request(client, f"http://{lb_address}/healthz").get("status") != 503:
        assert time.monotonic() < deadline, "HAProxy still answers /healthz with the app stopped"
        time.sleep(0.5)
    for path in ("/", "/index.html"):
        answer = http_request(client, f"http://{lb_address}{path}")
        assert answer["status"] == 200, answer
        assert answer["body"] == baked
        head = http_request(client, f"http://{lb_address}{path}", method="HEAD")
        assert head["status"] == 200 and head["headers"]["x-served-by"] == "static"
    # Not a baked page, or not a GET/HEAD: the app's, which is down.
    assert http_request(client, f"http://{lb_address}/other")["status"] == 503
    assert http_request(client, f"http://{lb_address}/", method="POST")["status"] == 503


def test_static_pages_published_on_the_balancer(lab, releases):
    lb = lab[LB]
    assert lb.run("readlink %s/static/current", APP).stdout.strip() == f"releases/{releases['A']}"
    # The balancer's current is an app clone's thing: this one is not.
    assert not lb.file(f"{APP}/current").exists
    assert not lb.file(f"{APP}/releases/{releases['A']}/venv").exists  # no app code runs there
    paths = [
        line
        for line in lb.file("/etc/haproxy/baked-paths.lst").content_string.splitlines()
        if line and not line.startswith("#")
    ]
    assert paths == ["/", "/index.html"]
    listening = [line.split()[3] for line in lb.run("ss -Hltn").stdout.splitlines()]
    assert "127.0.0.1:8081" in listening
    assert not [a for a in listening if a.endswith(":8081") and a != "127.0.0.1:8081"]
    assert not lb.file("/etc/nginx/sites-enabled/default").exists
    assert lb.service("nginx").is_running and lb.service("nginx").is_enabled


# --- the worker role, and deploy.yml ------------------------------------------------------------


def test_worker_role_does_nothing_without_a_worker(lab):
    other = lab[OTHER]
    assert not other.file(APP).exists
    assert not other.file("/etc/systemd/system/minimal-worker@.service").exists


def run_deploy_playbook(*extra: str) -> subprocess.CompletedProcess:
    playbook = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run(
        [str(playbook), "-i", "localhost,", str(ROOT_DIR / "playbooks/deploy.yml"), *extra],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def words(proc: subprocess.CompletedProcess) -> str:
    """The playbook's output with whitespace collapsed (the callback wraps long messages)."""
    return " ".join((proc.stdout + proc.stderr).split())


def test_deploy_playbook_requires_an_artifact():
    missing = run_deploy_playbook()
    assert missing.returncode != 0
    assert "-e deploy_artifact=/path/to/<name>-<release id>.tar.gz" in words(missing), words(
        missing
    )
    wrong = run_deploy_playbook("-e", "deploy_artifact=/nonexistent/minimal.tar.gz")
    assert wrong.returncode != 0
    assert "/nonexistent/minimal.tar.gz is not a file on the controller" in words(wrong), words(
        wrong
    )
