"""Hooks and a notifier around every deploy and rollback, on the controller.

A hooks directory holds executables named after the moment they run at (as git's hooks are):

- ``pre-deploy``: once the deploy lock is held and the nodes are surveyed, before anything changes
  (deploy and rollback alike). A non-zero exit, or no exit within its timeout, refuses the rollout:
  nothing changes, the history records the refusal;
- ``post-deploy`` after a deploy that succeeded or had nothing to do, ``post-rollback`` after a
  rollback that succeeded, ``on-failure`` after one that failed (its clones returned or not).
  These run once the lock is released and never change the outcome: a failure is reported only.

Each runs with the ``DEPLOYKIT_*`` variables (:func:`environment`) added to the controller's
environment, the summary JSON (``--json``'s last line) on stdin for those after, in its own
process group, killed with it at its timeout. Other files in the directory are ignored.

The notifier POSTs the same summary JSON to a URL after every rollout that held the lock, with a
bounded timeout; it never fails a rollout. The URL often carries a token (a chat webhook's path
does): it is never printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from deploykit.errors import BadInput

__all__ = [
    "HOOK_NAMES",
    "HookResult",
    "Hooks",
    "environment",
]

HOOK_NAMES: Final = ("pre-deploy", "post-deploy", "post-rollback", "on-failure")
#: Seconds a hook may run before it is killed (its whole process group).
DEFAULT_HOOK_TIMEOUT: Final = 60.0
#: Seconds the notification may take, connection included.
NOTIFY_TIMEOUT: Final = 5.0
#: The last lines of a hook's output kept for its report.
OUTPUT_LINES: Final = 5


@dataclass(frozen=True)
class HookResult:
    name: str
    rc: int | None  # None: killed at its timeout
    seconds: float
    output: list[str]

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def describe(self, timeout: float) -> str:
        """One line: how it ended and the last line it said."""
        ended = (
            f"exited {self.rc}"
            if self.rc is not None
            else f"did not end within {timeout:g} s (killed)"
        )
        said = f": {self.output[-1]}" if self.output else ""
        return f"the {self.name} hook {ended} after {self.seconds:.1f} s{said}"


def environment(summary: Mapping[str, Any], hook: str, inventory: Path) -> dict[str, str]:
    """The variables a hook gets, from the rollout's summary (``RolloutResult.to_dict()``)."""
    nodes = summary.get("nodes") or {}
    hosts = sorted({str(key).split("/", 1)[0] for key in nodes})
    changed = sorted(
        {
            str(key).split("/", 1)[0]
            for key, node in nodes.items()
            if isinstance(node, Mapping) and node.get("outcome") not in ("unchanged", "untouched")
        }
    )
    values = {
        "DEPLOYKIT_HOOK": hook,
        "DEPLOYKIT_ACTION": summary.get("event"),
        "DEPLOYKIT_APP": summary.get("app"),
        "DEPLOYKIT_RELEASE": summary.get("release"),
        "DEPLOYKIT_PREVIOUS": summary.get("previous"),
        "DEPLOYKIT_OUTCOME": summary.get("outcome") if hook != "pre-deploy" else None,
        "DEPLOYKIT_FAILURE": summary.get("failure"),
        "DEPLOYKIT_HOSTS": " ".join(hosts),
        "DEPLOYKIT_CHANGED_HOSTS": " ".join(changed) if hook != "pre-deploy" else None,
        "DEPLOYKIT_INVENTORY": str(inventory),
    }
    return {name: str(value) for name, value in values.items() if value is not None}


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Never the URL itself: it may carry a token.
        raise BadInput(
            "the notification URL (--notify or DEPLOYKIT_NOTIFY_URL) is not an http:// or "
            "https:// URL with a host"
        )
    return url


@dataclass(frozen=True)
class Hooks:
    """The hooks of one directory (None: no hooks) and the notification URL (None: none)."""

    directory: Path | None = None
    notify_url: str | None = None
    timeout: float = DEFAULT_HOOK_TIMEOUT
    notify_timeout: float = NOTIFY_TIMEOUT

    @classmethod
    def load(
        cls,
        directory: Path | None,
        *,
        notify_url: str | None = None,
        timeout: float = DEFAULT_HOOK_TIMEOUT,
    ) -> Hooks:
        """Check the directory and the URL before any host is contacted: raises
        :class:`BadInput` for a missing directory, a hook that is not an executable file, or a
        URL that is not http(s)."""
        if directory is not None:
            if not directory.is_dir():
                raise BadInput(f"--hooks {directory}: no such directory")
            for name in HOOK_NAMES:
                path = directory / name
                if path.exists() and not (path.is_file() and os.access(path, os.X_OK)):
                    raise BadInput(
                        f"the {name} hook {path} is not an executable file: chmod +x it, or "
                        "remove it"
                    )
        return cls(
            directory=directory,
            notify_url=_check_url(notify_url) if notify_url else None,
            timeout=timeout,
        )

    def has(self, name: str) -> bool:
        return self.directory is not None and (self.directory / name).is_file()

    def run(self, name: str, env: Mapping[str, str], stdin: str = "") -> HookResult | None:
        """Run hook ``name`` (None when the directory has none), killed with every process it
        started when its timeout runs out."""
        if self.directory is None or not self.has(name):
            return None
        started = time.monotonic()
        process = subprocess.Popen(
            [str(self.directory / name)],
            cwd=self.directory,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: killed whole at the timeout
        )
        try:
            output, _ = process.communicate(stdin, timeout=self.timeout)
            rc: int | None = process.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            try:
                output, _ = process.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                # Something it started left its session and still holds the output: not waited
                # for (its output is lost).
                output = ""
            rc = None
        lines = [line for line in (output or "").splitlines() if line.strip()]
        return HookResult(name, rc, time.monotonic() - started, lines[-OUTPUT_LINES:])

    def notify(self, summary: Mapping[str, Any]) -> str | None:
        """POST ``summary`` as JSON; None when the receiver answered 2xx, else why not (never
        the URL)."""
        if self.notify_url is None:
            return None
        # http(s) only: load() refuses any other scheme.
        request = urllib.request.Request(  # noqa: S310
            self.notify_url,
            data=json.dumps(summary).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "deploykit"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.notify_timeout) as answer:  # noqa: S310
                status = int(answer.status)
        except urllib.error.HTTPError as error:
            return f"the receiver answered {error.code}"
        except TimeoutError:
            return f"no answer within {self.notify_timeout:g} s"
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):
                return f"no answer within {self.notify_timeout:g} s"
            return f"could not reach the receiver ({type(reason).__name__})"
        return None if 200 <= status < 300 else f"the receiver answered {status}"
