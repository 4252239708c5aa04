#!/usr/bin/python
"""deploykit.fleet.converged: whether a host still has a role's configuration (site.yml skips
converging the role there then), and the record each role writes at the end of its converge."""

from __future__ import annotations

DOCUMENTATION = r"""
module: converged
short_description: Ask whether a host still has a role's configuration, or record that it has
description:
  - The controller's half (the action plugin of the same name) works out the role's fingerprint
    (its code, the inventory's groups, every host's address, this host's variables of the
    project's prefixes) and passes it here; module_utils/converge.py says what else is compared.
  - C(state=query) (site.yml, before a role) answers C(current) true when the role's last record on
    this host has the same fingerprint and every path, service and package it describes is as
    it was then. Otherwise it removes the record (a converge that then fails leaves none) and
    says why in C(reason). With C(full), it answers false and keeps the record. Never changes
    anything else.
  - C(state=present) (a role's last task, after its handlers) records what the role made.
options:
  role: {description: The role's name., type: str, required: true}
  state: {description: query or present., type: str, default: query, choices: [query, present]}
  fingerprint: {description: "The role's fingerprint (the action plugin sets it).", type: str, required: true}
  full: {description: "Converge in full whatever the record (deploykit_converge_full): query answers current false.", type: bool, default: false}
  paths: {description: "With state=present: the files and directories the role writes (a directory: every entry under it).", type: list, elements: path, default: []}
  services: {description: "With state=present: the units the role runs; each that is active or enabled at the record must still be at a query.", type: list, elements: str, default: []}
  packages: {description: "With state=present: the packages the role installs.", type: list, elements: str, default: []}
  record_dir: {description: Where the records are kept., type: path, default: /var/lib/deploykit-converged}
"""

RETURN = r"""
current: {description: "state=query: whether the host still has the role's configuration.", returned: always, type: bool}
reason: {description: "Why the role converges (state=query, current false), or what was recorded.", returned: always, type: str}
recorded: {description: "state=present: whether the record was written (it differed). Never reported as changed: the record is deploykit's bookkeeping, not the host's configuration.", returned: when state is present, type: bool}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.converge import (
    ConvergeProblem,
    difference,
    observe,
    read_record,
    remove_record,
    write_record,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "role": {"type": "str", "required": True},
            "state": {"type": "str", "default": "query", "choices": ["query", "present"]},
            "fingerprint": {"type": "str", "required": True, "no_log": False},
            "full": {"type": "bool", "default": False},
            "paths": {"type": "list", "elements": "path", "default": []},
            "services": {"type": "list", "elements": "str", "default": []},
            "packages": {"type": "list", "elements": "str", "default": []},
            "record_dir": {"type": "path", "default": "/var/lib/deploykit-converged"},
        },
        supports_check_mode=True,
    )
    params = module.params
    role, directory = params["role"], params["record_dir"]
    try:
        if params["state"] == "present":
            record = {
                "role": role,
                "fingerprint": params["fingerprint"],
                **observe(params["paths"], params["services"], params["packages"]),
            }
            # The record is deploykit's bookkeeping, like Ansible's fact cache: writing it is not a
            # change of the host's configuration (a run that changes nothing else reports 0).
            recorded = not module.check_mode and write_record(role, record, directory)
            module.exit_json(
                changed=False,
                recorded=recorded,
                current=True,
                reason=f"recorded {len(record['paths'])} paths, {len(record['services'])} "
                f"services, {len(record['packages'])} packages",
            )
        if params["full"]:
            # The record stays: what the converge changes no longer matches it, so a converge that
            # fails still leaves the next run converging in full; one that changes nothing
            # rewrites the same record (changed stays 0).
            reason: str | None = "a converge in full was asked for (deploykit_converge_full)"
        else:
            reason = difference(read_record(role, directory), params["fingerprint"])
            if reason is not None and not module.check_mode:
                remove_record(role, directory)
        module.exit_json(
            changed=False,
            current=reason is None,
            reason=reason or "the same inputs, and what it made is as it was: nothing to converge",
        )
    except (ConvergeProblem, OSError) as error:
        module.fail_json(msg=f"{role}: {error}")


if __name__ == "__main__":
    main()
