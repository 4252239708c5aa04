#!/usr/bin/python
"""deploykit.fleet.ledger: the deploy lock and the deploy history on the ledger host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ledger
short_description: Take, renew, release or read the deploy lock; append to or read the history
description:
  - One deploy at a time per inventory. The lock is a file created atomically with link(2); the
    history is a JSON-lines file appended one write(2) per record.
  - The lock is a lease. Its holder renews it (C(lock renew), every lease/4 seconds); a lease not
    renewed for more than its length (the holder's C(lease), default 60 s) is stale. C(lock status)
    reports C(held), C(holder), C(age) (seconds since it was taken), C(renewed) (seconds since its
    last renewal), C(stale) and C(stale_after).
  - Renew, release and take-over are serialized by flock(2) in the ledger's directory, each
    token-checked against the holder it read.
  - The same code as C(deploykit-ledger) on the balancer (module_utils/ledger.py).
options:
  command:
    description: What to do.
    type: str
    required: true
    choices: [lock acquire, lock renew, lock release, lock status, history append, history show, history merge, finish, finish settled]
  records:
    description:
      - C(history merge) appends, in order and as they are, the records this history lacks (another
        balancer's history; every balancer keeps a copy).
    type: list
    elements: dict
  dir:
    description: The ledger's directory (the ledger role creates it).
    type: path
    default: /var/lib/deploykit-ledger
  holder:
    description:
      - The holder's record (who, command, release, token, lease in seconds); C(lock acquire) adds
        since (the moment the lock is taken) and lease (default 60) when missing.
    type: dict
  wait:
    description: C(lock acquire) waits up to this many seconds (wall clock) for the holder.
    type: float
    default: 0
  take_over:
    description:
      - C(lock acquire) takes over a STALE lease (never a live one), atomically; the answer carries
        C(took_over) (the old holder) and the history a C(lock take-over) record.
    type: bool
    default: false
  token:
    description:
      - C(lock renew) renews, and C(lock release) and C(finish) release, only the lease whose
        holder carries this token. Required by C(lock renew) and C(finish).
    type: str
    default: ""
  force:
    description:
      - C(lock release) without a token releases a stale lease; a live one only with I(force).
        Every release without a token is recorded in the history (who, the holder it removed,
        forced or not).
    type: bool
    default: false
  who:
    description: Who releases (user@controller), for the history's record of a release.
    type: str
    default: ""
  record:
    description:
      - The record C(history append) appends (recorded is added); C(finish) appends it, then
        releases the lock by O(token): a rollout's last step in one call.
    type: dict
  limit:
    description: C(history show) (and C(lock acquire) O(with_history)) returns the last N records (0, every one).
    type: int
    default: 0
  with_history:
    description:
      - C(lock acquire) answers the history's last O(limit) records too (C(records), C(app): as
        C(history show)), read under the lock in the same call when it was taken, all the same
        when it was refused (the history is only ever appended to).
    type: bool
    default: false
  surveys:
    description:
      - C(finish settled) (a deploy's first run, when nothing may run before its plan): the
        survey module's report of each node, with its C(groups). When every one of O(hosts) was
        surveyed and runs the release of O(record) (its C(to)) in service, and no other
        application runs on them, the record goes into the history with every node unchanged and
        the lock is released by O(token): the deploy had nothing to do, and is finished. Otherwise
        nothing changes (C(settled) false) and the controller goes on with the deploy.
    type: dict
  hosts:
    description: C(finish settled) the hosts that must have been surveyed.
    type: list
    elements: str
    default: []
"""

RETURN = r"""
ledger:
  description: The ledger's answer, as C(deploykit-ledger) prints it.
  returned: always
  type: dict
dir:
  description: The ledger's directory (the controller asks the helper there over SSH afterwards).
  returned: always
  type: str
"""

import calendar
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.fleet import (
    settled_everywhere,
    status_from_survey,
)
from ansible_collections.deploykit.fleet.plugins.module_utils.ledger import (
    LedgerError,
    check_dir,
    history_append,
    lock_release,
    run,
)

CHANGING = (
    "lock acquire", "lock renew", "lock release", "history append", "history merge",
    "finish", "finish settled",
)  # fmt: skip


def finish_settled(params: dict) -> dict:
    """The deploy of a release every node already runs in service, finished in its first run: the
    same decision as the controller's (module_utils/fleet.py), then the record and the release."""
    if not params["token"]:
        raise LedgerError("finish settled releases the lock by its holder's token: give token")
    record = dict(params["record"] or {})
    app, release = str(record.get("app") or ""), str(record.get("to") or "")
    surveys = params["surveys"] or {}
    report = status_from_survey(app, surveys)
    missing = [host for host in params["hosts"] if host not in surveys]
    if missing or report.foreign or not settled_everywhere(report, release):
        return {"settled": False, "missing": missing}
    started = record.get("started")
    try:
        began = calendar.timegm(time.strptime(str(started), "%Y-%m-%dT%H:%M:%SZ"))
        record["seconds"] = round(max(0.0, time.time() - began), 1)
    except ValueError:
        pass
    record["from"] = release
    record["nodes"] = {
        f"{node.host}/{node.role}": {"outcome": "unchanged", "step": None, "seconds": {}}
        for node in sorted(report.nodes, key=lambda n: (n.host, n.role))
    }
    appended = history_append(params["dir"], record)
    released = lock_release(params["dir"], str(params["token"] or ""))
    return {"settled": True, "appended": appended["appended"], "released": released["released"],
            "record": appended["record"]}  # fmt: skip


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "command": {
                "type": "str",
                "required": True,
                "choices": [
                    "lock acquire",
                    "lock renew",
                    "lock release",
                    "lock status",
                    "history append",
                    "history show",
                    "history merge",
                    "finish",
                    "finish settled",
                ],
            },
            "dir": {"type": "path", "default": "/var/lib/deploykit-ledger"},
            "holder": {"type": "dict"},
            "wait": {"type": "float", "default": 0},
            "take_over": {"type": "bool", "default": False},
            "token": {"type": "str", "default": "", "no_log": False},
            "force": {"type": "bool", "default": False},
            "who": {"type": "str", "default": ""},
            "record": {"type": "dict"},
            "limit": {"type": "int", "default": 0},
            "with_history": {"type": "bool", "default": False},
            "records": {"type": "list", "elements": "dict"},
            "surveys": {"type": "dict"},
            "hosts": {"type": "list", "elements": "str", "default": []},
        },
        required_if=[
            ("command", "lock acquire", ["holder"]),
            ("command", "lock renew", ["token"]),
            ("command", "history append", ["record"]),
            ("command", "history merge", ["records"]),
            ("command", "finish", ["record", "token"]),
            ("command", "finish settled", ["record", "surveys", "token"]),
        ],
        supports_check_mode=False,
    )
    command = module.params["command"]
    try:
        check_dir(module.params["dir"])
        if command == "finish settled":
            answer = finish_settled(module.params)
        else:
            answer = run(module.params["dir"], command, module.params)
    except (LedgerError, OSError) as error:
        module.fail_json(msg=f"deploy ledger: {error}")
    changed = command in CHANGING and bool(
        answer.get("acquired")
        or answer.get("extended")
        or answer.get("released")
        or answer.get("appended")
        or answer.get("settled")
    )
    module.exit_json(changed=changed, ledger=answer, dir=module.params["dir"])


if __name__ == "__main__":
    main()
