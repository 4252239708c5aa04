"""The controller's half of deploykit.fleet.converged: work out the role's fingerprint here (its
code's digest through deploykit.fleet.configuration_fingerprint: filter/fingerprint.py), then ask
the node (module_utils/converge.py says what it compares)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.deploykit.fleet.plugins.filter.fingerprint import (
    configuration_fingerprint,
)
from ansible_collections.deploykit.fleet.plugins.module_utils.converge import tree_digest

MODULE = "deploykit.fleet.converged"
#: This collection's plugins: the roles run its modules, so their code is part of every role's.
PLUGINS = Path(__file__).resolve().parents[1]

_code_digests: dict[Path, str] = {}


def role_dir(name: str, basedir: str, current: Any = None) -> Path:
    """The directory of role ``name``: the running role's own, else the first match on the roles
    path (ansible.cfg's roles_path, then roles/ beside and above the playbook)."""
    if current is not None and getattr(current, "_role_name", None) == name:
        return Path(current._role_path).resolve()
    base = Path(basedir)
    for candidate in [*map(Path, C.DEFAULT_ROLES_PATH), base / "roles", base.parent / "roles"]:
        if (candidate / name / "tasks").is_dir():
            return (candidate / name).resolve()
    raise AnsibleActionFail(f"{MODULE}: role {name!r} not found on the roles path")


def code_digest(directory: Path) -> str:
    if directory not in _code_digests:
        _code_digests[directory] = tree_digest([directory, PLUGINS])
    return _code_digests[directory]


class ActionModule(ActionBase):
    _VALID_ARGS = frozenset(("role", "state", "paths", "services", "packages", "record_dir"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        name = str(args.get("role") or "")
        role = role_dir(name, self._loader.get_basedir(), self._task._role)
        module_args = {
            **args,
            # The role's name is in its code's digest (the files' names are relative to roles/).
            "fingerprint": configuration_fingerprint(
                code_digest(role),
                task_vars["hostvars"],
                task_vars["groups"],
                task_vars["inventory_hostname"],
            ),
            "full": boolean(task_vars.get("deploykit_converge_full", False), strict=False),
        }
        result.update(self._execute_module(MODULE, module_args=module_args, task_vars=task_vars))
        return result
