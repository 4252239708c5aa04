"""deploykit.fleet.release_instance: the systemd instance name of a release, as the unit per
release (the worker's <app>-worker@<instance>.service) and its Celery node name
(<app>-<instance>@<host>) spell it: the release id, with the one character a unit name may not
hold escaped (module_utils/release.py, the same function activate and deploykit-release use).

    {{ app }}-{{ release_id | deploykit.fleet.release_instance }}@{{ ansible_facts.nodename }}
"""

from __future__ import annotations

from typing import Any

from ansible_collections.deploykit.fleet.plugins.module_utils.release import release_instance

DOCUMENTATION = r"""
name: release_instance
short_description: The systemd instance name of a release id
description:
  - The release id, with C(+) escaped as C(\x2b) (systemd-escape's rule; no other character a
    release id may hold needs it).
options:
  _input: {description: The release id., type: str, required: true}
"""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"release_instance": release_instance}
