#!/usr/bin/python
"""deploykit.fleet.ledger: the deploy lock and the deploy history on the ledger host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ledger
short_description: Take, release or read the deploy lock; append to or read the deploy history
description:
  - One deploy at a time per inventory. The lock is a file created atomically with link(2); the
    history is a JSON-lines file appended one write(2) per record.
  - The same code as C(deploykit-ledger) on the balancer (module_utils/ledger.py).
options:
  command:
    description: What to do.
    type: str
    required: true
    choices: [lock acquire, lock release, lock status, history append, history show]
  dir:
    description: The ledger's directory (the ledger role creates it).
    type: path
    default: /var/lib/deploykit-ledger
  holder:
    description: The holder's record (who, command, release, token); C(lock acquire) adds since.
    type: dict
  wait:
    description: C(lock acquire) waits up to this many seconds (wall clock) for the holder.
    type: float
    default: 0
  token:
    description: C(lock release) releases only the lock whose holder carries this token.
    type: str
    default: ""
  record:
    description: The record C(history append) appends (recorded is added).
    type: dict
  limit:
    description: C(history show) returns the last N records (0, every one).
    type: int
    default: 0
"""

RETURN = r"""
ledger:
  description: The ledger's answer, as C(deploykit-ledger) prints it.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.ledger import (
    LedgerError,
    check_dir,
    run,
)

CHANGING = ("lock acquire", "lock release", "history append")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "command": {
                "type": "str",
                "required": True,
                "choices": [
                    "lock acquire",
                    "lock release",
                    "lock status",
                    "history append",
                    "history show",
                ],
            },
            "dir": {"type": "path", "default": "/var/lib/deploykit-ledger"},
            "holder": {"type": "dict"},
            "wait": {"type": "float", "default": 0},
            "token": {"type": "str", "default": "", "no_log": False},
            "record": {"type": "dict"},
            "limit": {"type": "int", "default": 0},
        },
        required_if=[
            ("command", "lock acquire", ["holder"]),
            ("command", "history append", ["record"]),
        ],
        supports_check_mode=False,
    )
    command = module.params["command"]
    try:
        check_dir(module.params["dir"])
        answer = run(module.params["dir"], command, module.params)
    except (LedgerError, OSError) as error:
        module.fail_json(msg=f"deploy ledger: {error}")
    changed = command in CHANGING and bool(
        answer.get("acquired") or answer.get("released") or answer.get("appended")
    )
    module.exit_json(changed=changed, ledger=answer)


if __name__ == "__main__":
    main()
