"""The deploy ledger's helper on a balancer, asked over SSH: the calls a rollout makes while it
runs and when it ends (a lease renewal every lease/4 seconds; the record and the release of the
lock), each one SSH connection and one short process on the balancer instead of a run of
``ansible-playbook`` (about 1.5 s of the controller's CPU, beside the rollout's own run).

The helper is the ledger module's own code (module_utils/ledger.py, installed by the ledger role
as a program) and takes the module's arguments (``call``: one JSON object on stdin, so a token
or a record never appears in a process list). The balancer is reached as ``deploykit exec``
reaches a host (remote.py: the inventory's SSH settings, its host key checked), as root or with
``sudo -n``. When the helper cannot be asked that way (a setting exec cannot honour, sudo asking
for a password, a balancer without the helper yet, a host not reached), :meth:`LedgerOverSsh.ask`
answers None and says why once; the caller then runs the same command through Ansible
(playbooks/rollout/ledger.yml, finish.yml), and so do the rollout's later calls.
"""

from __future__ import annotations

import getpass
import json
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from ansible_collections.deploykit.fleet.plugins.module_utils.ledger import HELPER
from deploykit import remote
from deploykit.errors import DeploykitError

#: Seconds one call may take, connection included (a renewal is due every lease/4 seconds).
CALL_TIMEOUT: Final = 10.0


class LedgerOverSsh:
    """The ledger's helper on the balancers of ``inventory``, whose ledger is ``directory``."""

    def __init__(
        self,
        inventory: Path,
        directory: str,
        *,
        log: Callable[[str], None],
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.inventory = inventory
        self.directory = directory
        self.timeout = timeout
        self.log = log
        #: Why the helper is no longer asked over SSH (None: it still is).
        self.given_up: str | None = None
        self._targets: dict[str, remote.SshTarget] = {}

    def ask(
        self, host: str, request: Mapping[str, Any], *, alone: bool = False
    ) -> dict[str, Any] | None:
        """The helper's answer on ``host`` to ``request`` (the module's arguments: ``command``
        and its own), refused (exit 1) or not; None when it could not be asked (see the module's
        docstring): the caller asks through Ansible. ``alone``: a call whose failure says
        nothing of the next ones (a copy of the history on another balancer): asked even after
        the client gave up, and never makes it give up."""
        if self.given_up is not None and not alone:
            return None
        answer, problem = self._call(host, request)
        if problem is not None and not alone:
            self.given_up = remote.printable(problem)[:300]
            self.log(
                f"the deploy ledger is asked through Ansible from here on (its helper could not "
                f"be asked over SSH: {self.given_up})"
            )
        return answer

    def _call(
        self, host: str, request: Mapping[str, Any]
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(the answer, None), or (None, why it could not be asked)."""
        try:
            target = self._targets.get(host) or remote.read_targets(self.inventory, [host])[host]
        except DeploykitError as error:
            return None, str(error)
        self._targets[host] = target
        words = [HELPER, "--dir", self.directory, "call"]
        if (target.user or getpass.getuser()) != "root":
            words = ["sudo", "-n", *words]
        done = remote.run_with_input(
            target, shlex.join(words), json.dumps(dict(request)), timeout=self.timeout
        )
        if done.error is not None:
            return None, f"{host}: {done.error}"
        if done.rc not in (0, 1) or not done.stdout.strip():  # e.g. sudo asked for a password
            said = done.stderr.strip().splitlines()[-1:] or ["no answer"]
            return None, f"{host}: exit {done.rc}: {said[-1]}"
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            return None, f"{host}: its answer is not JSON"
        if not isinstance(answer, dict):
            return None, f"{host}: its answer is not a JSON object"
        return answer, None
