#!/usr/bin/python
"""deploykit.fleet.soak: judge the canary clone on live traffic against the old release."""

from __future__ import annotations

DOCUMENTATION = r"""
module: soak
short_description: Judge a canary on live traffic from HAProxy's per-server statistics
description:
  - For O(duration) seconds (wall clock), compares the canary server's 5xx rate and response time
    with those of the O(others) (the clones still on the old release), from the runtime API's
    C(show stat); see module_utils/soak.py for the figures and the rules.
  - Fails, naming the figures, when the canary is worse than the limits allow; the 5xx rate is
    checked every second, so a canary that fails hard ends the soak at once.
  - Runs on a balancer (delegate_to). Changes nothing.
options:
  backend: {description: The backend., type: str, required: true}
  server: {description: The canary server., type: str, required: true}
  others: {description: The servers on the old release to compare with., type: list, elements: str, default: []}
  duration: {description: The soak in seconds., type: float, required: true}
  max_error_increase: {description: "Percentage points of 5xx the canary may have above the old release.", type: float, default: 2.0}
  max_response_ratio: {description: How many times the old release's response time the canary may take., type: float, default: 3.0}
  min_requests: {description: Fewer requests to the canary than this over the soak are not judged., type: int, default: 20}
  socket: {description: HAProxy's admin socket., type: path, default: /run/haproxy/admin.sock}
"""

RETURN = r"""
soak:
  description: "{seconds, canary, old (each {servers, requests, errors, error_rate (percent), rtime_ms}), verdict (passed, failed, not judged), reason}"
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.haproxy import (
    Failure,
    server_argument_spec,
)
from ansible_collections.deploykit.fleet.plugins.module_utils.soak import Limits, soak


def main() -> None:
    module = AnsibleModule(
        argument_spec=server_argument_spec(
            others={"type": "list", "elements": "str", "default": []},
            duration={"type": "float", "required": True},
            max_error_increase={"type": "float", "default": 2.0},
            max_response_ratio={"type": "float", "default": 3.0},
            min_requests={"type": "int", "default": 20},
        ),
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False)
    limits = Limits(p["max_error_increase"], p["max_response_ratio"], p["min_requests"])
    try:
        report = soak(
            p["socket"], p["backend"], p["server"], p["others"], duration=p["duration"],
            limits=limits,
        )  # fmt: skip
    except (Failure, LookupError) as failure:
        module.fail_json(msg=f"soak {p['backend']}/{p['server']}: {failure}")
    if report["verdict"] == "failed":
        module.fail_json(
            msg=f"the canary on live traffic for {report['seconds']:g} s: {report['reason']}",
            soak=report,
        )
    module.exit_json(changed=False, soak=report)


if __name__ == "__main__":
    main()
