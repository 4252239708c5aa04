"""How deploykit's wall time grows with the fleet: a no-op site.yml and a deploy on 3, 6 and 12
clones, with the project's Ansible settings and with Ansible's defaults.

    .venv/bin/python bench/fleet_speed.py [--clones 3,6,12] [--short] [--json]

For each fleet size the lab is resized (`deploykit lab up --app-clones N`: existing hosts are kept),
converged and brought to one release without timing; then it times:

- `deploykit provision` on the converged fleet (a no-op site.yml: each host only answers whether
  it still has each role's configuration, plugins/module_utils/converge.py);
- `deploykit provision --full` on it (every role's every task: what a change of the inputs costs),
  with the project's settings (not with `--short`);
- `deploykit deploy --artifact` of a release built beforehand (staging, canary, batches, workers);

first with the project's settings (ansible.cfg: forks 25, pipelining, ControlPersist, smart fact
gathering with a cache), then with Ansible's defaults (forks 5, no pipelining, no ControlPersist),
set through the environment, which overrides ansible.cfg: the no-op at every size, the deploy at
the largest. Targets (printed, not asserted): 12 clones
cost at most twice what 3 cost. The lab is left at the first size given. Needs the lab up with the
stack converged (`deploykit up`).

`--short` (CI) keeps the lab as it is, resizes nothing and deploys nothing: it times the no-op
site.yml with the project's settings and with Ansible's defaults (no role converges in either),
and prints their ratio. How the
time grows with the fleet needs the full run (a 12-clone lab takes a quarter of an hour to make).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_cli import describe_yardstick, machine_yardstick

from deploykit import lab
from deploykit.project import project_root

ROOT = project_root(Path(__file__).parent)
# Ansible's own defaults for what ansible.cfg tunes (environment variables beat ansible.cfg).
ANSIBLE_DEFAULTS = {
    "ANSIBLE_FORKS": "5",
    "ANSIBLE_PIPELINING": "False",
    # No ControlMaster/ControlPersist: a fresh SSH connection for every task.
    "ANSIBLE_SSH_ARGS": "",
    "ANSIBLE_GATHERING": "implicit",
}


@dataclass
class Figures:
    clones: int
    settings: str  # "project" or "defaults"
    noop_site: float | None = None
    full_site: float | None = None
    deploy: float | None = None
    notes: list[str] = field(default_factory=list)


def deploykit(*args: str, env: dict[str, str] | None = None) -> tuple[int, float, str]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        cwd=ROOT, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip
    return proc.returncode, time.monotonic() - started, proc.stdout + proc.stderr


def must(label: str, result: tuple[int, float, str]) -> float:
    rc, seconds, output = result
    if rc != 0:
        sys.exit(f"fleet_speed: {label} failed (exit {rc}):\n{output[-3000:]}")
    return seconds


def build(version: str, out: Path) -> str:
    rc, _, output = deploykit(
        "build", "--app", "examples/shop", "--version", version, "--out", str(out), "--json"
    )
    if rc != 0:
        sys.exit(f"fleet_speed: build {version} failed:\n{output[-3000:]}")
    path: str = json.loads(output[output.index("{") : output.rindex("}") + 1])["path"]
    return path


def resize(clones: int) -> None:
    lab.up(lab.LabSpec(app_clones=clones), root=ROOT, log=lambda _line: None)
    must(f"provision {clones} clones", deploykit("provision", "--json"))


def measure(
    clones: int, settings: str, env: dict[str, str], out: Path, *, deploy: bool, full: bool = True
) -> Figures:
    figures = Figures(clones=clones, settings=settings)
    figures.noop_site = must("no-op provision", deploykit("provision", "--json", env=env))
    if settings == "project" and full:
        figures.full_site = must(
            "no-op provision --full", deploykit("provision", "--full", "--json", env=env)
        )
    if deploy:
        artifact = build(f"0.0.{clones}-fleet{settings}{time.strftime('%H%M%S')}", out)
        figures.deploy = must("deploy", deploykit("deploy", "--artifact", artifact, env=env))
    print(
        f"{clones:>3} clones  {settings:<8}  no-op site.yml {figures.noop_site:6.1f} s"
        + (f"   in full {figures.full_site:6.1f} s" if figures.full_site is not None else "")
        + (f"   deploy {figures.deploy:6.1f} s" if figures.deploy is not None else ""),
        flush=True,
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", default="3,6,12", help="fleet sizes (default 3,6,12)")
    parser.add_argument(
        "--short", action="store_true", help="the lab as it is: the no-op, ours and defaults"
    )
    parser.add_argument(
        "--no-defaults", action="store_true", help="the project's settings only (no defaults runs)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hosts = lab.status(root=ROOT)
    if not any("lb" in h.groups for h in hosts):
        print("fleet_speed: the lab is not up: run `deploykit up` first", file=sys.stderr)
        return 2
    yardstick = machine_yardstick()
    print(describe_yardstick(yardstick))
    results: list[Figures] = []
    if args.short:
        clones = sum(1 for h in hosts if "app" in h.groups)
        with tempfile.TemporaryDirectory(prefix="deploykit-fleet-") as tmp:
            for settings, env in (("project", {}), ("defaults", ANSIBLE_DEFAULTS)):
                # Not in full: tests/e2e/test_provision.py runs one (CI's durations show it).
                results.append(measure(clones, settings, env, Path(tmp), deploy=False, full=False))
        return report(results, json_output=args.json, yardstick=yardstick)
    sizes = [int(n) for n in args.clones.split(",")]
    with tempfile.TemporaryDirectory(prefix="deploykit-fleet-") as tmp:
        out = Path(tmp)
        base = build(f"0.0.0-fleet{time.strftime('%H%M%S')}", out)
        for clones in sizes:
            resize(clones)
            # New clones get the live release first: the timed deploy is a release change.
            must("deploy the base release", deploykit("deploy", "--artifact", base))
            results.append(measure(clones, "project", {}, out, deploy=True))
            # The defaults' deploy at the largest size only: that is where 5 forks and a new
            # SSH connection per task cost the most, and each such deploy takes minutes.
            largest = clones == max(sizes)
            if not args.no_defaults:
                results.append(measure(clones, "defaults", ANSIBLE_DEFAULTS, out, deploy=largest))
        resize(sizes[0])
    return report(results, json_output=args.json, yardstick=yardstick)


def report(
    results: list[Figures], *, json_output: bool, yardstick: dict[str, float] | None = None
) -> int:
    ours = {f.clones: f for f in results if f.settings == "project"}
    theirs = {f.clones: f for f in results if f.settings == "defaults"}
    small, large = min(ours), max(ours)
    summary: dict[str, object] = {"runs": [asdict(f) for f in results], "machine": yardstick}
    for what in ("noop_site", "deploy"):
        a, b = getattr(ours[small], what), getattr(ours[large], what)
        if large != small and a and b:
            ratio = b / a
            summary[f"{what}_ratio_{large}_to_{small}"] = round(ratio, 2)
            verdict = "met" if ratio <= 2 else "MISSED"
            print(f"{what}: {large} clones / {small} clones = {ratio:.2f} (target <= 2: {verdict})")
        for clones in sorted(ours):
            if clones not in theirs:
                continue
            mine, default = getattr(ours[clones], what), getattr(theirs[clones], what)
            if mine and default:
                summary[f"{what}_defaults_ratio_{clones}"] = round(default / mine, 2)
                print(f"{what}, {clones} clones: Ansible's defaults / ours = {default / mine:.2f}")
    if json_output:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
