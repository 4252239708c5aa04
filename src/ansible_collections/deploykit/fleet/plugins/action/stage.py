"""The controller's half of deploykit.fleet.stage: read the artifact's manifest here, upload the
artifact only to a node that does not have the release yet (asked first, unless the task says it
lacks it), then run the module there."""

from __future__ import annotations

import json
import os
import tarfile
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.deploykit.fleet.plugins.module_utils.release import (
    MANIFEST,
    ReleaseProblem,
    check_manifest,
)

MODULE = "deploykit.fleet.stage"


def read_manifest(artifact: str) -> dict[str, Any]:
    """The manifest, the archive's first member (deploykit build writes it first), checked for
    the fields a deploy reads. The node checks every file's sha256 as it unpacks."""
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST or not member.isfile():
                raise ReleaseProblem(
                    f"{artifact}: {MANIFEST} is not its first member: not a deploykit artifact"
                )
            handle = tar.extractfile(member)
            raw = handle.read() if handle is not None else b""
        return check_manifest(json.loads(raw), f"{artifact}: {MANIFEST}")
    except (OSError, tarfile.TarError, EOFError, ValueError) as error:
        raise ReleaseProblem(f"{artifact}: not a readable release artifact ({error})") from None


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(
        ("artifact", "upload", "app_root", "venv", "python", "keep", "configuration")
    )

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        artifact = os.path.realpath(os.path.expanduser(str(args.pop("artifact", ""))))
        # The controller's survey says the node lacks the release: upload without asking first.
        # (Never in check mode, where the module only reports what it would do.)
        upload = boolean(args.pop("upload", False), strict=True) and not self._task.check_mode
        try:
            manifest = read_manifest(artifact)
        except ReleaseProblem as error:
            raise AnsibleActionFail(f"release artifact: {error}") from None
        module_args = {
            **args,
            "app_root": args.get("app_root") or f"/srv/{manifest['name']}",
            "release_id": manifest["release_id"],
            "checksum": manifest["checksum"],
        }
        answer = (
            {"needs_artifact": True}
            if upload
            else self._execute_module(MODULE, module_args=module_args, task_vars=task_vars)
        )
        if answer.get("needs_artifact") and not answer.get("failed"):
            tmpdir = self._make_tmp_path()
            try:
                remote = self._connection._shell.join_path(tmpdir, "artifact.tar.gz")
                self._transfer_file(artifact, remote)
                self._fixup_perms2((tmpdir, remote))
                answer = self._execute_module(
                    MODULE, module_args={**module_args, "src": remote}, task_vars=task_vars
                )
            finally:
                self._remove_tmp_path(tmpdir)
            answer["uploaded"] = True
        answer.pop("needs_artifact", None)
        result.update(answer)
        return result
