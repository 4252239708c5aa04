#!/usr/bin/python
"""deploykit.fleet.bake: the bake worker's pages baked from live data now, or its last bake read."""

from __future__ import annotations

DOCUMENTATION = r"""
module: bake
short_description: Run the scheduled bake now, or read the last one (deploykit bake)
description:
  - With O(now), starts the bake's systemd service (the one its timer starts) and waits for it,
    within O(timeout) seconds; past the deadline the bake is stopped, and every balancer keeps
    the pages it served. A bake already running is waited for, not doubled.
  - Returns the last bake's record (APP_ROOT/bakes/last.json, written by deploykit-pages bake)
    and the timer's next run. Fails when the bake run now did not publish its pages, naming why.
options:
  app_root: {description: Where the application lives on the bake worker., type: path, required: true}
  unit: {description: "The bake's service (<name>-bake.service).", type: str, required: true}
  timer: {description: "The bake's timer (<name>-bake.timer).", type: str, required: true}
  now: {description: Bake now., type: bool, default: false}
  timeout: {description: Seconds the bake run now may take., type: int, default: 600}
"""

RETURN = r"""
record: {description: The last bake's record (outcome, reason, bake_id, release_id, pages, balancers)., returned: always, type: dict}
next_run: {description: When the timer starts the next bake (empty when it is off)., returned: always, type: str}
"""

import os
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.pages import read_record, tail


def systemctl_value(module: AnsibleModule, unit: str, prop: str) -> str:
    rc, out, _ = module.run_command(["systemctl", "show", unit, f"--property={prop}", "--value"])
    return out.strip() if rc == 0 else ""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "path", "required": True},
            "unit": {"type": "str", "required": True},
            "timer": {"type": "str", "required": True},
            "now": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": 600},
        },
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.exists(f"/etc/systemd/system/{p['unit']}"):
        module.fail_json(
            msg=f"{p['unit']} is not installed on this host: deploy a release that bakes "
            "(deploykit deploy) so the bake role sets it up"
        )
    ran = False
    if p["now"] and not module.check_mode:
        started = time.time()
        try:
            proc = subprocess.run(
                ["systemctl", "start", p["unit"]],
                capture_output=True,
                text=True,
                timeout=p["timeout"],
                check=False,
            )
        except subprocess.TimeoutExpired:
            subprocess.run(["systemctl", "stop", p["unit"]], capture_output=True, check=False)
            module.fail_json(
                msg=f"the bake did not finish within its deadline ({p['timeout']} s): stopped; "
                "every balancer keeps the pages it served",
                record=read_record(p["app_root"]) or {},
            )
        ran = True
        record = read_record(p["app_root"]) or {}
        if float(record.get("started") or 0) < started - 1:
            # The bake wrote no record of this run: it failed before it could (its journal says why).
            _, out, _ = module.run_command(
                ["journalctl", "--unit", p["unit"], "--lines", "5", "--no-pager", "--output", "cat"]
            )
            record = {
                "outcome": "failed",
                "reason": f"{p['unit']} failed (exit {proc.returncode}): {tail(out) or proc.stderr}",
            }
    record = read_record(p["app_root"]) if not ran else record
    result = {
        "changed": ran,
        "record": record or {},
        "next_run": systemctl_value(module, p["timer"], "NextElapseUSecRealtime"),
    }
    if ran and record.get("outcome") not in ("published", "nothing to bake"):
        module.fail_json(msg=f"the bake failed: {record.get('reason')}", **result)
    if ran and record.get("purge", "").startswith("failed"):
        module.fail_json(msg=record.get("reason"), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
