"""The controller's half of deploykit.fleet.converged: work out the role's fingerprint here (its
code, the inventory's groups, every host's address, this host's variables of the project's
prefixes), then ask the node (module_utils/converge.py says what it compares)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.deploykit.fleet.plugins.filter.address import private_address
from ansible_collections.deploykit.fleet.plugins.module_utils.converge import (
    fingerprint,
    tree_digest,
)

MODULE = "deploykit.fleet.converged"
#: This collection's plugins: the roles run its modules, so their code is part of every role's.
PLUGINS = Path(__file__).resolve().parents[1]
#: Variables of these prefixes (besides each role's name) are inputs of every role.
PREFIXES = ("deploykit", "nginx")
#: Variables that choose how to converge, not what: not inputs.
NOT_INPUTS = frozenset({"deploykit_converge_full"})

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


def role_inputs(role: Path, task_vars: dict[str, Any]) -> dict[str, Any]:
    """What a role's converge on this host is made of, besides what it finds there."""
    hostvars = task_vars["hostvars"]
    groups = {name: list(hosts) for name, hosts in task_vars["groups"].items()}
    this = hostvars[task_vars["inventory_hostname"]]
    prefixes = sorted({p.name for p in role.parent.iterdir() if p.is_dir()} | set(PREFIXES))
    pattern = re.compile(rf"^({'|'.join(map(re.escape, prefixes))})_")
    return {
        "role": role.name,
        "code": code_digest(role),
        "groups": groups,
        "addresses": {host: private_address(hostvars[host], host) for host in groups["all"]},
        "vars": {
            key: _value(this, key)
            for key in sorted(this.keys())
            if pattern.match(key) and key not in NOT_INPUTS
        },
    }


def _value(variables: Any, key: str) -> Any:
    """The variable's value as the roles see it; one that cannot be templated here (it names what
    only a role defines) counts by its error's text, which is as stable as its template."""
    try:
        return variables[key]
    except Exception as error:
        return f"<{type(error).__name__}: {error}>"


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
            "fingerprint": fingerprint(role_inputs(role, task_vars)),
            "full": boolean(task_vars.get("deploykit_converge_full", False), strict=False),
        }
        result.update(self._execute_module(MODULE, module_args=module_args, task_vars=task_vars))
        return result
