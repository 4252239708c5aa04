"""How long the lab takes to come up: cold (image built), from nothing (image cached), no-op.

    .venv/bin/python bench/lab_up.py [--cold] [--app-clones N]

Leaves the lab up at the end (run `deploykit lab down` to remove it). Prints one line per figure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from deploykit import lab
from deploykit.project import project_root


def timed(label: str, action: object) -> float:
    started = time.monotonic()
    action()  # type: ignore[operator]
    elapsed = time.monotonic() - started
    print(f"{label:<45} {elapsed:7.1f} s", flush=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", action="store_true", help="rebuild the base image first")
    parser.add_argument("--app-clones", type=int, default=3)
    args = parser.parse_args()
    root = project_root(Path(__file__).parent)
    spec = lab.LabSpec(app_clones=args.app_clones)
    quiet = lambda _message: None  # noqa: E731 - the figures are the output

    lab.down(root=root, log=quiet)
    if args.cold:
        timed("base image (debootstrap + import)", lambda: lab.ensure_image(quiet, rebuild=True))
    timed(
        f"lab up from nothing ({len(spec.hosts())} hosts)",
        lambda: lab.up(spec, root=root, log=quiet),
    )
    timed("lab up again (no-op)", lambda: lab.up(spec, root=root, log=quiet))
    ansible = Path(sys.executable).parent / "ansible"
    timed(
        "ansible all -m ping over SSH",
        lambda: subprocess.run(
            [ansible, "all", "-m", "ansible.builtin.ping"],
            cwd=root,
            check=True,
            capture_output=True,
        ),
    )


if __name__ == "__main__":
    main()
