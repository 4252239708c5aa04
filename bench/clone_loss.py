"""Losing one app clone under load: the requests, the failures, and how long until HAProxy
takes the clone out.

    .venv/bin/python bench/clone_loss.py [--short] [--rounds N] [--clone app2] [--json]
                                         [--fault process|host] [--lost SECONDS]

Needs the lab up with the stack converged and the example shop deployed (`deploykit up`); it says
so and exits 2 when that is not the case. Each round takes the steps of the killed-clone fault in
tests/e2e/test_faults.py:

  a) the load through the balancer (bench/loadgen.py: keep-alive connections, each worker a
     logged-in user) runs a steady phase;
  b) on the balancer, the runtime helper's `state app <clone>` is polled every 0.1 s from before
     the kill; on the clone, `systemctl kill -s KILL <app>-web.service` (systemd restarts it after
     its RestartSec); polling goes on until HAProxy has marked the clone DOWN and then UP again;
  c) the load runs an "after" phase, then stops.

With --fault host, the clone's whole host is lost instead of its process (a power cut): its
container loses its network, then is killed (its restart policy off), so no RST ever answers for it;
after --lost seconds (8) it is started again and boots. The requests that may fail are then those
in flight on that host that are not GET or HEAD: HAProxy retries those on another clone.

It prints per round the requests and failures (by kind) of the load, the requests in flight at
the kill (the most that may fail: the contract is that only those do), the seconds from the kill
until HAProxy marked the clone DOWN and until it was UP again; then min, median and max over the
rounds. The kill's time is taken on the clone and the polls' on the balancer: the lab's containers
share the controller's clock (one kernel), so the two compare. Figures only: it exits 0 whenever
it ran. Every round leaves the clone running, ready and UP in HAProxy (the helper's `ready`), even
when interrupted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_cli import EXIT_NOT_READY, EXIT_RAN, Emit, NotRunnable, Out, run_bench
from docker.errors import DockerException
from loadgen import LoadGenerator, Report, SessionLogin
from shop_traffic import SHOP_USERS_MIX

from deploykit import lab
from deploykit.errors import DeploykitError
from deploykit.project import lab_inventory_dir, project_root

BACKEND = "app"
# The haproxy role's runtime helper on the balancers (roles/haproxy/files/deploykit-haproxy).
HELPER = "/usr/local/libexec/deploykit-haproxy"
#: How long one round waits for the clone to go DOWN and come back UP before it gives up.
ROUND_LIMIT = 60.0


# --- the lab -----------------------------------------------------------------------------------


@dataclass
class Lab:
    balancer: str  # the balancer's inventory name
    url: str  # http://<balancer address>
    addresses: dict[str, str]  # host -> address
    ssh_dir: Path

    def ssh(self, host: str) -> list[str]:
        return [
            "ssh", "-i", str(self.ssh_dir / "id_ed25519"),
            "-o", f"UserKnownHostsFile={self.ssh_dir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            f"root@{self.addresses[host]}",
        ]  # fmt: skip

    def run(self, host: str, command: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [*self.ssh(host), command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise DeploykitError(f"{host}: {command!r} exited {done.returncode}: {done.stderr}")
        return done.stdout.strip()


def find_lab(root: Path, clone: str) -> Lab:
    bring_up = "bring it up with `deploykit up` (or `make up`)"
    try:
        hosts = lab.status(root=root)
    except (DeploykitError, DockerException, OSError) as error:
        raise NotRunnable(f"cannot see the lab ({error}); {bring_up}") from None
    running = {h.name: h for h in hosts if h.state == "running" and h.address}
    balancers = [h for h in running.values() if "lb" in h.groups]
    if not balancers:
        raise NotRunnable(f"no lab is running (no balancer host); {bring_up}")
    clones = sorted(h.name for h in running.values() if "app" in h.groups)
    if clone not in clones:
        raise NotRunnable(
            f"--clone {clone}: not a running app clone of the lab (clones: "
            f"{', '.join(clones) or 'none'})"
        )
    if len(clones) < 2:
        raise NotRunnable("the lab has one app clone: losing it loses the site; use 2 or more")
    url = f"http://{balancers[0].address}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "/healthz", timeout=5) as answer:
            status = int(answer.status)
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        raise NotRunnable(f"{url}/healthz does not answer ({error}); {bring_up}") from None
    if status != 200:
        raise NotRunnable(f"{url}/healthz answers HTTP {status}: is the shop deployed? {bring_up}")
    return Lab(
        balancer=balancers[0].name,
        url=url,
        addresses={name: h.address for name, h in running.items()},
        ssh_dir=lab_inventory_dir(root) / ".ssh",
    )


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=60, check=False
    )


def lose_host(clone: str) -> tuple[float, float]:
    """Kill the clone's container (a power cut: nothing answers for it any more, not even an
    RST); (before, after) on the wall clock."""
    container = f"{lab.CONTAINER_PREFIX}{clone}"
    # The lab's containers restart by themselves (unless-stopped): not this one, until restore.
    docker("update", "--restart=no", container)
    before = time.time()
    # The network goes first: killed with its link up, the kernel would close the processes'
    # sockets with an RST.
    cut = docker("network", "disconnect", "--force", lab.NETWORK_NAME, container)
    killed = docker("kill", "--signal=KILL", container)
    after = time.time()
    if cut.returncode != 0 or killed.returncode != 0:
        raise DeploykitError(f"losing {container}: {cut.stderr.strip()} {killed.stderr.strip()}")
    return before, after


def bring_host_back(found: Lab, clone: str) -> None:
    """Start the clone's container again, its restart policy back, and wait until it answers."""
    container = f"{lab.CONTAINER_PREFIX}{clone}"
    # Connected again with its own address (a no-op when it never lost it).
    docker("network", "connect", "--ip", found.addresses[clone], lab.NETWORK_NAME, container)
    docker("start", container)
    docker("update", "--restart=unless-stopped", container)
    deadline = time.monotonic() + 120
    while subprocess.run([*found.ssh(clone), "true"], capture_output=True, check=False,
                         timeout=30).returncode != 0:  # fmt: skip
        if time.monotonic() > deadline:
            raise DeploykitError(f"{clone} does not answer over SSH 120 s after its restart")
        time.sleep(1)


def restore(found: Lab, app: str, clone: str) -> None:
    """The clone's web service running, and its server ready and UP in HAProxy."""
    found.run(clone, f"systemctl start {app}-web.service")
    found.run(found.balancer, shlex.join([HELPER, "ready", BACKEND, clone, "--timeout", "60"]))


# --- one round ---------------------------------------------------------------------------------


@dataclass
class Round:
    requests: int
    failures: int
    failures_by_kind: dict[str, int]
    #: Requests in flight at some moment while `systemctl kill` ran (between a clock read
    #: before it and one after): the most that the kill can fail.
    in_flight_at_kill: int
    #: Seconds from the kill until HAProxy marked the clone DOWN, and UP again (None: not seen).
    down_after: float | None
    up_after: float | None
    polls: int
    transitions: list[str]
    failed: list[str]


def one_round(found: Lab, args: argparse.Namespace, number: int) -> tuple[Round, Report]:
    load = LoadGenerator(
        found.url,
        paths=SHOP_USERS_MIX,
        concurrency=args.concurrency,
        rate=args.rate,
        session=SessionLogin(body=lambda worker: {"user": f"bench-clone-loss-{worker}"}),
        seed=f"clone-loss-{number}",
    )
    argv = [HELPER, "watch", BACKEND, args.clone, "--timeout", str(ROUND_LIMIT), "--until-back"]
    poller = subprocess.Popen(
        [*found.ssh(found.balancer), shlex.join(argv)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert poller.stdout is not None
        first = poller.stdout.readline()
        if not first.strip():
            raise DeploykitError(f"the poller on {found.balancer} printed nothing")
        with load:
            load.phase("steady")
            time.sleep(args.steady)
            load.phase("fault")
            if args.fault == "host":
                killed_at, kill_done = lose_host(args.clone)
                time.sleep(args.lost)
                bring_host_back(found, args.clone)
            else:
                stamp = found.run(
                    args.clone,
                    f"date +%s.%N; systemctl kill -s KILL {args.app}-web.service; date +%s.%N",
                )
                killed_at, kill_done = (float(line) for line in stamp.split()[:2])
            rest, _ = poller.communicate(timeout=ROUND_LIMIT + 30)
            load.phase("after")
            time.sleep(args.after)
    finally:
        if poller.poll() is None:
            poller.kill()
            poller.communicate()
        if args.fault == "host":
            bring_host_back(found, args.clone)
        restore(found, args.app, args.clone)
    samples: list[dict[str, Any]] = [
        json.loads(line) for line in [first, *rest.splitlines()] if line.strip()
    ]
    report = load.report()
    down = next((s for s in samples if s.get("operational") == "down"), None)
    up = None
    if down is not None:
        up = next((s for s in samples if s["t"] > down["t"] and s.get("status") == "UP"), None)
    kill_offset, kill_done_offset = killed_at - load.started_at, kill_done - load.started_at
    failed = [s for s in report.samples if s.failure is not None]
    result = Round(
        requests=report.total.requests,
        failures=report.failures,
        failures_by_kind=dict(report.total.failures_by_kind),
        in_flight_at_kill=sum(
            1 for s in report.samples if s.start <= kill_done_offset and s.end >= kill_offset
        ),
        down_after=None if down is None else down["t"] - killed_at,
        up_after=None if up is None else up["t"] - killed_at,
        polls=max((int(s.get("polls", 0)) for s in samples), default=0),
        transitions=[
            f"{s['t'] - killed_at:+.2f} s {s.get('status') or s.get('error') or 'end'}"
            for s in samples
        ],
        failed=[
            f"{s.start - kill_offset:+.3f} s {s.method} {s.path}: {s.failure}: {s.detail}"
            for s in failed
        ],
    )
    return result, report


# --- output ------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_round(number: int, result: Round, say: Out) -> None:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.failures_by_kind.items()))
    say(
        f"round {number}: {result.requests} requests, {result.failures} failed"
        f"{f' ({kinds})' if kinds else ''}, {result.in_flight_at_kill} in flight at the kill; "
        f"DOWN after {_s(result.down_after)} s, UP again after {_s(result.up_after)} s "
        f"({result.polls} polls)"
    )
    say("   HAProxy's view: " + "; ".join(result.transitions))
    for line in result.failed:
        say(f"   failed {line}")


def spread(values: Sequence[float | None], digits: int = 2) -> str:
    seen = [v for v in values if v is not None]
    if not seen:
        return "-"
    low, middle, high = min(seen), statistics.median(seen), max(seen)
    return f"{low:.{digits}f} / {middle:.{digits}f} / {high:.{digits}f}"


def run(args: argparse.Namespace, say: Out, emit: Emit) -> int:
    root = project_root(Path(__file__).parent)
    found = find_lab(root, args.clone)
    what = (
        f"the host of {args.clone} (its container), back after {args.lost:g} s"
        if args.fault == "host"
        else f"{args.app}-web on {args.clone}"
    )
    say(f"lab: balancer {found.url}; killing {what}, {args.rounds} round(s)")
    say(
        f"load: {args.concurrency} keep-alive connections, {args.rate:g} requests/s; "
        f"steady {args.steady:g} s, after {args.after:g} s"
    )
    rounds: list[Round] = []
    for number in range(1, args.rounds + 1):
        result, _ = one_round(found, args, number)
        print_round(number, result, say)
        rounds.append(result)
    say(
        f"\n== {args.clone} ({args.fault}) killed under load, {len(rounds)} round(s) "
        "(min / median / max)"
    )
    say(f"requests           {spread([float(r.requests) for r in rounds], 0)}")
    say(f"failures           {spread([float(r.failures) for r in rounds], 0)}")
    say(f"in flight at kill  {spread([float(r.in_flight_at_kill) for r in rounds], 0)}")
    say(f"DOWN after (s)     {spread([r.down_after for r in rounds])}")
    say(f"UP again after (s) {spread([r.up_after for r in rounds])}")
    emit(
        {
            "balancer": found.url,
            "clone": args.clone,
            "fault": args.fault,
            "load": {"concurrency": args.concurrency, "rate": args.rate},
            "rounds": [asdict(r) for r in rounds],
        }
    )
    return EXIT_RAN


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="one round, steady 2 s and after 1 s")
    parser.add_argument("--rounds", type=int, default=3, help="kills, one after the other (3)")
    parser.add_argument("--clone", default="app2", help="the clone to kill (default app2)")
    parser.add_argument("--app", default="shop", help="the application's name (default shop)")
    parser.add_argument(
        "--fault", choices=["process", "host"], default="process",
        help="what is lost: the web process (systemctl kill, the default) or the clone's whole "
        "host (its container killed: no RST)",
    )  # fmt: skip
    parser.add_argument("--lost", type=float, default=8.0,
                        help="--fault host: seconds before the host comes back (8)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=90.0, help="requests/s in all (90)")
    parser.add_argument("--concurrency", type=int, default=6, help="connections (6)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with it all")
    args = parser.parse_args(argv)
    args.steady, args.after = (2.0, 1.0) if args.short else (5.0, 3.0)
    if args.short:
        args.rounds = 1
    # Exit 2 for any error that stops it, whatever a DeploykitError's own code: the contract of
    # the docstring above ("it says so and exits 2").
    return run_bench(
        "clone_loss",
        args.json,
        lambda say, emit: run(args, say, emit),
        cannot_run_exit=EXIT_NOT_READY,
    )


if __name__ == "__main__":
    sys.exit(main())
