"""Read a deploykit release artifact's manifest ON THE CONTROLLER (run by the release role through
the pipe lookup, with the controller's Python: the one that runs ansible-playbook and has deploykit).

    python3 read_manifest.py ARTIFACT

Always exits 0 and prints one JSON object: {"manifest": {...}} when the artifact is usable, else
{"error": "<what is wrong, naming the file>"} for the role to fail with. The check is deploykit's one
implementation (deploykit.fleet's module_utils/release.py: verify_artifact), the same that
`deploykit verify` and the nodes' unpacking run.
"""

from __future__ import annotations

import json
import sys

from ansible_collections.deploykit.fleet.plugins.module_utils.release import (
    ReleaseProblem,
    verify_artifact,
)


def read(path: str) -> dict:
    try:
        return {"manifest": verify_artifact(path)}
    except ReleaseProblem as problem:
        return {"error": str(problem)}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(json.dumps({"error": "usage: read_manifest.py ARTIFACT"}))
    else:
        print(json.dumps(read(sys.argv[1])))
