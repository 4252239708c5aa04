"""Where the deploykit project (playbooks, roles, inventories) lives on the controller."""

from __future__ import annotations

import os
from pathlib import Path

_MARKERS = ("site.yml", "ansible.cfg")


def _is_project(path: Path) -> bool:
    return all((path / marker).is_file() for marker in _MARKERS)


def project_root(start: Path | None = None) -> Path:
    """The project directory: $DEPLOYKIT_PROJECT, else the nearest parent of ``start`` (the
    current directory) holding site.yml and ansible.cfg, else the checkout this package was
    installed from."""
    env = os.environ.get("DEPLOYKIT_PROJECT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if _is_project(candidate):
            return candidate
    # An editable install (the README's way) lives in <checkout>/src/deploykit.
    checkout = Path(__file__).resolve().parents[2]
    if _is_project(checkout):
        return checkout
    return here


def lab_inventory_dir(root: Path | None = None) -> Path:
    """inventories/lab/: written by ``deploykit lab up``, removed by ``deploykit lab down``."""
    return (root or project_root()) / "inventories" / "lab"
