"""Playbooks run through ansible-runner, turned into a live display and a structured result.

``run_playbook`` wraps ``ansible_runner.run``: every run gets its own private data directory under
``<root>/.cache/runs/`` (kept for post-mortems), ansible's own output is silenced, and the event
stream feeds an :class:`EventCollector` (which builds the :class:`RunResult`) and an optional sink:
:class:`ProgressDisplay` for people, :class:`JsonLinesSink` for scripts.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import ansible_runner
import pexpect
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from deploykit.errors import BadInput, DeploykitError

__all__ = [
    "KEEP_RUNS",
    "EventCollector",
    "EventSink",
    "HostRecap",
    "JsonLinesSink",
    "ProgressDisplay",
    "RunResult",
    "TaskFailure",
    "failure_message",
    "result_from_events",
    "run_playbook",
    "trim_event",
]

#: How many per-run directories ``<root>/.cache/runs/`` keeps; older ones are removed.
KEEP_RUNS = 20

# A failure message is for a table cell and a log line: the gist, not the whole module output.
_MESSAGE_LINES = 4
_MESSAGE_LINE_CHARS = 240
# ansible-playbook's own errors (bad syntax, missing vault file) arrive as loose stdout lines.
_ERROR_LINES = 12

_RUN_DIR_PATTERN = re.compile(r"^\d{8}T\d{6}Z-")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

# ansible-runner's default ("jsonfile") points Ansible's fact cache at the run's artifacts dir,
# overriding ansible.cfg's cache that is shared between runs. Any other value leaves ansible.cfg in
# charge.
_FACT_CACHE_FROM_ANSIBLE_CFG = "ansible.cfg"

# playbook_on_stats keys → HostRecap fields.
_STATS_FIELDS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failed",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}

_TASK_START_EVENTS = frozenset({"playbook_on_task_start", "playbook_on_handler_task_start"})

# The events a script sees from JsonLinesSink. Item events (one per loop item), runner_on_start and
# loose stdout lines are left out: noise for scripts, and their shape shifts between releases.
_JSON_EVENTS = frozenset(
    {
        "playbook_on_start",
        "playbook_on_play_start",
        "playbook_on_task_start",
        "playbook_on_handler_task_start",
        "playbook_on_no_hosts_matched",
        "playbook_on_no_hosts_remaining",
        "runner_on_ok",
        "runner_on_failed",
        "runner_on_skipped",
        "runner_on_unreachable",
    }
)


# --- the result -------------------------------------------------------------------------------


@dataclass
class HostRecap:
    """One host's line of the PLAY RECAP."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass
class TaskFailure:
    """A task that failed (and was not ignored or rescued) or a host that could not be reached."""

    host: str
    task: str
    message: str
    unreachable: bool = False


#: deploykit's collection: its modules' results reach the controller as data (RunResult.results).
FLEET = "deploykit.fleet"


@dataclass
class ModuleResult:
    """One task result of a deploykit.fleet module on one host (a delegated task: the host it ran
    for); ``seconds`` is the task's own duration."""

    host: str
    action: str
    ok: bool
    res: dict[str, Any]
    seconds: float | None = None


@dataclass
class RunResult:
    """What a playbook run did, built from its event stream; ``status`` and ``rc`` come from
    ansible-runner ("successful", "failed", "canceled", "timeout")."""

    status: str
    rc: int
    recap: dict[str, HostRecap]
    failures: list[TaskFailure]
    artifacts_dir: Path | None
    #: ansible-playbook's own error when it failed outside any task (bad syntax, missing vault
    #: password file, unknown module): the lines it printed, trimmed.
    error: str | None = None
    #: What the playbook reported with ``ansible.builtin.set_stats`` (aggregated over hosts).
    data: dict[str, Any] = field(default_factory=dict)
    #: Every task result of deploykit's own modules (deploykit.fleet.*), in the order they ended:
    #: the channel through which the rollout's steps hand their results to deploykit, as data.
    results: list[ModuleResult] = field(default_factory=list)

    def results_of(self, action: str) -> list[ModuleResult]:
        """The results of one module (its short name, e.g. "ledger"), in the order they ended."""
        return [r for r in self.results if r.action == f"{FLEET}.{action}"]

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

    @property
    def failed_hosts(self) -> list[str]:
        """Hosts with a failed task or unreachable, in recap order."""
        hosts = {h for h, r in self.recap.items() if r.failed or r.unreachable}
        hosts.update(f.host for f in self.failures if f.host)
        return sorted(hosts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rc": self.rc,
            "ok": self.ok,
            "hosts": {host: asdict(recap) for host, recap in self.recap.items()},
            "failures": [asdict(failure) for failure in self.failures],
            "error": self.error,
            "artifacts_dir": str(self.artifacts_dir) if self.artifacts_dir else None,
        }


# --- from events to a result ------------------------------------------------------------------


def _event_data(event: Mapping[str, Any]) -> Mapping[str, Any]:
    data = event.get("event_data")
    return data if isinstance(data, Mapping) else {}


def _task_name(data: Mapping[str, Any]) -> str:
    # An unnamed task is reported by Ansible under its action; keep the same fallback.
    return str(data.get("task") or data.get("name") or data.get("task_action") or "")


def _text_lines(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [line for item in value for line in _text_lines(item)]
    text = _ANSI_ESCAPE.sub("", str(value))
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _clip(line: str) -> str:
    if len(line) <= _MESSAGE_LINE_CHARS:
        return line
    return line[: _MESSAGE_LINE_CHARS - 1] + "…"


def _failed_item(res: Mapping[str, Any]) -> Mapping[str, Any] | None:
    results = res.get("results")
    if not isinstance(results, list):
        return None
    for item in results:
        if isinstance(item, Mapping) and (item.get("failed") or item.get("unreachable")):
            return item
    return None


def failure_message(res: Any) -> str:
    """The gist of a failed result: its ``msg`` first lines, then the end of stderr (where the
    cause usually is), a few lines in all. Loop results report the first failed item; the item
    itself is not shown because it may hold a secret."""
    if not isinstance(res, Mapping):
        lines = _text_lines(res)
        return "\n".join(_clip(line) for line in lines[:_MESSAGE_LINES]) or "failed"
    item = _failed_item(res)
    if item is not None:
        return failure_message(item)
    head = _text_lines(res.get("msg") or res.get("reason") or res.get("censored"))
    detail = _text_lines(res.get("stderr") or res.get("module_stderr"))
    if not detail and res.get("rc") not in (None, 0):
        # A command that failed silently on stderr often explains itself on stdout.
        detail = _text_lines(res.get("stdout") or res.get("module_stdout"))
    if not head and not detail:
        return "failed (no message)"
    if detail:
        head = head[:2]
        lines = head + detail[-(_MESSAGE_LINES - len(head)) :]
    else:
        lines = head[:_MESSAGE_LINES]
    return "\n".join(_clip(line) for line in lines)


class EventCollector:
    """Folds ansible-runner events into per-host counts, failures and ansible's final recap.

    Counts are kept live (for the progress display) and replaced by ``playbook_on_stats`` when it
    arrives; a run that dies before its stats keeps the live counts."""

    def __init__(self) -> None:
        self.live: dict[str, HostRecap] = {}
        self.current_task: dict[str, str] = {}
        self.stats: dict[str, HostRecap] | None = None
        self.data: dict[str, Any] = {}
        self.results: list[ModuleResult] = []
        self.failures: list[TaskFailure] = []
        self.play = ""
        self.task = ""
        self._error_lines: list[str] = []
        self._in_error = False

    def _host(self, name: str) -> HostRecap:
        return self.live.setdefault(name, HostRecap())

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("event", ""))
        data = _event_data(event)
        host = str(data.get("host", ""))
        if kind == "verbose":
            self._feed_stdout(str(event.get("stdout", "")))
        elif kind == "playbook_on_play_start":
            self.play = str(data.get("play") or data.get("name") or "")
        elif kind in _TASK_START_EVENTS:
            self.task = _task_name(data)
        elif kind == "runner_on_start" and host:
            self._host(host)
            self.current_task[host] = _task_name(data)
        elif kind == "runner_on_ok" and host:
            self._count_ok(host, data)
            self._keep_result(host, data, ok=True)
        elif kind == "runner_on_skipped" and host:
            self._host(host).skipped += 1
        elif kind == "runner_on_failed" and host:
            self._feed_failed(host, data)
        elif kind == "runner_on_unreachable" and host:
            self._host(host).unreachable += 1
            self._add_failure(host, data, unreachable=True)
        elif kind == "playbook_on_stats":
            self._feed_stats(data)

    def _count_ok(self, host: str, data: Mapping[str, Any]) -> None:
        recap = self._host(host)
        recap.ok += 1
        res = data.get("res")
        if isinstance(res, Mapping) and res.get("changed"):
            recap.changed += 1

    def _keep_result(self, host: str, data: Mapping[str, Any], *, ok: bool) -> None:
        action = str(data.get("resolved_action") or data.get("task_action") or "")
        res = data.get("res")
        if action.startswith(f"{FLEET}.") and isinstance(res, Mapping):
            duration = data.get("duration")
            self.results.append(
                ModuleResult(
                    host=host, action=action, ok=ok, res=dict(res),
                    seconds=float(duration) if isinstance(duration, int | float) else None,
                )
            )  # fmt: skip

    def _feed_failed(self, host: str, data: Mapping[str, Any]) -> None:
        self._keep_result(host, data, ok=bool(data.get("ignore_errors")))
        if data.get("ignore_errors"):
            # Ansible counts an ignored failure as ok and ignored; it is not a failure of the run.
            self._count_ok(host, data)
            self._host(host).ignored += 1
            return
        self._host(host).failed += 1
        self._add_failure(host, data, unreachable=False)

    def _add_failure(self, host: str, data: Mapping[str, Any], *, unreachable: bool) -> None:
        self.failures.append(
            TaskFailure(
                host=host,
                task=_task_name(data),
                message=failure_message(data.get("res")),
                unreachable=unreachable,
            )
        )

    def _feed_stats(self, data: Mapping[str, Any]) -> None:
        recap: dict[str, HostRecap] = {}
        hosts: set[str] = set()
        for key in (*_STATS_FIELDS, "processed"):
            counts = data.get(key)
            if isinstance(counts, Mapping):
                hosts.update(str(h) for h in counts)
        for host in sorted(hosts):
            values: dict[str, int] = {}
            for key, attr in _STATS_FIELDS.items():
                counts = data.get(key)
                values[attr] = int(counts.get(host, 0)) if isinstance(counts, Mapping) else 0
            recap[host] = HostRecap(**values)
        self.stats = recap
        custom = data.get("artifact_data")
        if isinstance(custom, Mapping):
            self.data = dict(custom)

    def _feed_stdout(self, stdout: str) -> None:
        # ansible-playbook's own errors are loose stdout lines: "[ERROR]: ..." (ansible-core 2.19)
        # or "ERROR! ..." (older), followed by their origin and context up to a blank line.
        for raw in stdout.splitlines() or [""]:
            line = _ANSI_ESCAPE.sub("", raw).rstrip()
            if line.startswith(("[ERROR]", "ERROR!")):
                self._in_error = True
            elif not line.strip():
                self._in_error = False
                continue
            if self._in_error and len(self._error_lines) < _ERROR_LINES:
                self._error_lines.append(_clip(line))

    def _reconciled_failures(self) -> list[TaskFailure]:
        """Failures that the recap confirms: a failure later rescued, or a duplicate report of the
        same failure, is dropped by keeping only each host's last N, N being its recap count."""
        if self.stats is None:
            return list(self.failures)
        keep: list[TaskFailure] = []
        budget = {
            (host, kind): getattr(recap, kind)
            for host, recap in self.stats.items()
            for kind in ("failed", "unreachable")
        }
        for failure in reversed(self.failures):
            slot = (failure.host, "unreachable" if failure.unreachable else "failed")
            if budget.get(slot, 0) > 0:
                budget[slot] -= 1
                keep.append(failure)
        keep.reverse()
        return keep

    @property
    def recap(self) -> dict[str, HostRecap]:
        if self.stats is not None:
            return dict(self.stats)
        return {host: self.live[host] for host in sorted(self.live)}

    def result(self, *, status: str, rc: int, artifacts_dir: Path | None = None) -> RunResult:
        ok = status == "successful" and rc == 0
        return RunResult(
            status=status,
            rc=rc,
            recap=self.recap,
            failures=self._reconciled_failures(),
            artifacts_dir=artifacts_dir,
            error="\n".join(self._error_lines) if self._error_lines and not ok else None,
            data=dict(self.data),
            results=list(self.results),
        )


def result_from_events(
    events: Iterable[Mapping[str, Any]], *, status: str, rc: int, artifacts_dir: Path | None = None
) -> RunResult:
    """The RunResult for a recorded event stream (e.g. ``artifacts/<ident>/job_events``)."""
    collector = EventCollector()
    for event in events:
        collector.feed(event)
    return collector.result(status=status, rc=rc, artifacts_dir=artifacts_dir)


# --- sinks ------------------------------------------------------------------------------------


class EventSink(Protocol):
    """Receives every ansible-runner event during the run, then the result once."""

    def __call__(self, event: dict[str, Any]) -> None: ...

    def close(self, result: RunResult) -> None: ...


def _event_status(kind: str, data: Mapping[str, Any]) -> str | None:
    res = data.get("res")
    changed = isinstance(res, Mapping) and bool(res.get("changed"))
    if kind == "runner_on_ok":
        return "changed" if changed else "ok"
    if kind == "runner_on_failed":
        return "ignored" if data.get("ignore_errors") else "failed"
    if kind == "runner_on_unreachable":
        return "unreachable"
    if kind == "runner_on_skipped":
        return "skipped"
    return None


def trim_event(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stable, script-facing fields of an event, or None for events scripts do not get.

    Results are not copied: a task's return values (a debug of a variable, a registered command's
    output) can hold secrets. Only failures carry a message, and only its trimmed gist."""
    kind = str(event.get("event", ""))
    if kind not in _JSON_EVENTS:
        return None
    data = _event_data(event)
    trimmed: dict[str, Any] = {"event": kind, "created": event.get("created")}
    if kind == "playbook_on_start":
        trimmed["playbook"] = data.get("playbook")
    for key in ("play", "task", "host"):
        if data.get(key):
            trimmed[key] = str(data[key])
    status = _event_status(kind, data)
    if status is not None:
        trimmed["status"] = status
        res = data.get("res")
        trimmed["changed"] = isinstance(res, Mapping) and bool(res.get("changed"))
        if status in ("failed", "ignored", "unreachable"):
            trimmed["msg"] = failure_message(res)
        for key in ("start", "end", "duration"):
            if data.get(key) is not None:
                trimmed[key] = data[key]
    return trimmed


class JsonLinesSink:
    """One JSON object per line on ``stream``: each event (see :func:`trim_event`), then a final
    ``{"event": "recap", ...}`` line holding :meth:`RunResult.to_dict`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()

    def _write(self, obj: Mapping[str, Any]) -> None:
        self._stream.write(json.dumps(obj, default=str, sort_keys=False) + "\n")
        # Scripts follow the run as it happens (`| jq`), so each line goes out at once.
        self._stream.flush()

    def __call__(self, event: dict[str, Any]) -> None:
        trimmed = trim_event(event)
        if trimmed is not None:
            # Where the time went: seconds since this run started, beside the event's own time.
            trimmed["elapsed"] = round(time.monotonic() - self._started, 3)
            self._write(trimmed)

    def close(self, result: RunResult) -> None:
        self._write({"event": "recap", **result.to_dict()})


class ProgressDisplay:
    """Progress for people on ``console``: a live table (one row per host: current task, counts) on
    a terminal; on anything else (CI logs, pipes) one plain line per task start and per failure,
    because a live table redrawn into a log file is unreadable. ``close`` prints the recap."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._collector = EventCollector()
        self._interactive = console.is_terminal and not console.is_dumb_terminal
        self._live: Live | None = None

    # -- during the run

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self._handle(event)
        except BaseException:
            # Never leave the terminal with a hidden cursor and a half-drawn table.
            self._stop_live()
            raise

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("event", ""))
        before = len(self._collector.failures)
        self._collector.feed(event)
        data = _event_data(event)
        if kind in _TASK_START_EVENTS and not self._interactive:
            self._plain(f"TASK [{self._collector.play}] {_task_name(data)}")
        for failure in self._collector.failures[before:]:
            self._print_failure_line(failure)
        if kind == "playbook_on_no_hosts_matched":
            self._plain(f"no hosts matched in play [{data.get('play', '')}]")
        # Loose stdout lines before the first play (warnings, a syntax error) get no empty table.
        if self._interactive and (self._live is not None or self._collector.play):
            self._refresh()

    def _plain(self, line: str) -> None:
        # Task names and messages are not rich markup; soft_wrap keeps one event on one log line.
        self._console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _print_failure_line(self, failure: TaskFailure) -> None:
        word = "UNREACHABLE" if failure.unreachable else "FAILED"
        gist = failure.message.splitlines()[0] if failure.message else ""
        line = Text.assemble(
            (word, "bold red"), f" {failure.host}: {failure.task}: ", (gist, "red")
        )
        self._console.print(line, highlight=False, soft_wrap=not self._interactive)

    def _refresh(self) -> None:
        table = self._progress_table()
        if self._live is None:
            self._live = Live(
                table,
                console=self._console,
                refresh_per_second=4,
                # The recap printed by close() replaces the table; nothing is shown twice.
                transient=True,
                # Nothing else writes while we run; leaving sys.stdout alone keeps --json safe.
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        else:
            self._live.update(table)

    def _progress_table(self) -> Table:
        parts = (self._collector.play, self._collector.task)
        title = Text(" > ".join(part for part in parts if part))
        table = Table(title=title, title_justify="left", expand=False)
        table.add_column("host", no_wrap=True)
        table.add_column("task", overflow="ellipsis", no_wrap=True, max_width=60)
        for column in ("ok", "changed", "failed", "unreachable"):
            table.add_column(column, justify="right")
        for host in sorted(self._collector.live):
            recap = self._collector.live[host]
            bad = recap.failed or recap.unreachable
            table.add_row(
                Text(host, style="red" if bad else ""),
                Text(self._collector.current_task.get(host, "")),
                str(recap.ok),
                Text(str(recap.changed), style="yellow" if recap.changed else ""),
                Text(str(recap.failed), style="red" if recap.failed else ""),
                Text(str(recap.unreachable), style="red" if recap.unreachable else ""),
            )
        return table

    def _stop_live(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            with contextlib.suppress(Exception):
                live.stop()

    # -- after the run

    def close(self, result: RunResult) -> None:
        self._stop_live()
        if result.recap:
            self._console.print(_recap_table(result.recap))
        if result.failures:
            self._console.print(_failures_table(result.failures))
        if result.error:
            self._console.print(Text(result.error, style="red"))
        self._console.print(_summary_line(result), highlight=False)
        if not result.ok and result.artifacts_dir is not None:
            self._plain(f"run artifacts (events, stdout): {result.artifacts_dir}")


def _recap_table(recap: Mapping[str, HostRecap]) -> Table:
    table = Table(title="recap", title_justify="left")
    table.add_column("host", no_wrap=True)
    styles = {"changed": "yellow", "failed": "red", "unreachable": "red", "rescued": "cyan"}
    names = list(_STATS_FIELDS.values())
    for name in names:
        table.add_column(name, justify="right")
    for host, counts in recap.items():
        cells = [
            Text(str(value), style=styles.get(name, "") if value else "dim")
            for name, value in ((n, getattr(counts, n)) for n in names)
        ]
        table.add_row(Text(host), *cells)
    return table


def _failures_table(failures: Iterable[TaskFailure]) -> Table:
    table = Table(title="failures", title_justify="left", show_lines=True)
    table.add_column("host", no_wrap=True, style="red")
    table.add_column("task")
    table.add_column("message")
    for failure in failures:
        task = failure.task + (" (unreachable)" if failure.unreachable else "")
        table.add_row(Text(failure.host), Text(task), Text(failure.message))
    return table


def _summary_line(result: RunResult) -> Text:
    if result.ok:
        changed = sum(r.changed for r in result.recap.values())
        hosts = len(result.recap)
        line = Text(f"converged: {hosts} host{'s' if hosts != 1 else ''}, {changed} changed")
        line.stylize("green")
        if not result.recap:
            line.append(
                " (nothing ran: no host or task matched hosts/--limit/--tags)", style="yellow"
            )
        return line
    failed = result.failed_hosts
    if failed:
        detail = ", ".join(failed)
    elif result.status in ("canceled", "timeout"):
        detail = f"run {result.status}"
    else:
        detail = f"ansible-playbook exited with rc {result.rc}"
    return Text(f"failed: {detail}", style="bold red")


# --- running ----------------------------------------------------------------------------------


def _new_run_dir(runs: Path, stem: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}-{_UNSAFE_NAME_CHARS.sub('_', stem) or 'playbook'}"
    for attempt in range(1, 1000):
        candidate = runs / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            # 0700: the run dir holds env/extravars (secrets passed with -e) and artifacts/command
            # (the whole environment of the run).
            candidate.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return candidate
    raise DeploykitError(f"cannot create a run directory under {runs}: too many runs this second")


def _prune_runs(runs: Path, keep: int, current: Path) -> None:
    """Keep the newest ``keep`` run dirs (names start with their UTC timestamp, so they sort)."""
    dirs = sorted(
        p for p in runs.iterdir() if p.is_dir() and _RUN_DIR_PATTERN.match(p.name) and p != current
    )
    for old in dirs[: max(0, len(dirs) - (keep - 1))]:
        # A run dir that cannot be removed (another user's files) must not stop this run.
        shutil.rmtree(old, ignore_errors=True)


def _ansible_playbook_dir() -> Path | None:
    """The directory to put first on PATH so that ansible-playbook is the one installed with
    deploykit: the venv's bin is not on PATH when deploykit is run as .venv/bin/deploykit."""
    sibling = Path(sys.executable).parent / "ansible-playbook"
    if os.access(sibling, os.X_OK):
        return sibling.parent
    if shutil.which("ansible-playbook"):
        return None
    raise DeploykitError(
        "ansible-playbook not found next to this Python or on PATH",
        hint="install deploykit with its dependencies (pip install -e .) in this environment",
    )


def _host_key_checking(ansible_cfg: Path) -> str:
    """ansible.cfg's host_key_checking (Ansible's default: on). ansible-runner turns host key
    checking off unless ANSIBLE_HOST_KEY_CHECKING is set, which would override ansible.cfg: a run
    through deploykit must check host keys exactly as `ansible-playbook` from the project does."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        parser.read(ansible_cfg, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return "True"
    return parser.get("defaults", "host_key_checking", fallback="True").strip() or "True"


def _envvars(root: Path) -> dict[str, str]:
    env: dict[str, str] = {
        # We render our own display; ansible's colour codes would only clutter artifacts/stdout.
        "ANSIBLE_NOCOLOR": "1",
    }
    ansible_cfg = root / "ansible.cfg"
    if ansible_cfg.is_file():
        env["ANSIBLE_CONFIG"] = str(ansible_cfg)
    if "ANSIBLE_HOST_KEY_CHECKING" not in os.environ:
        env["ANSIBLE_HOST_KEY_CHECKING"] = _host_key_checking(ansible_cfg)
    bin_dir = _ansible_playbook_dir()
    if bin_dir is not None:
        env["PATH"] = os.pathsep.join((str(bin_dir), os.environ.get("PATH", os.defpath)))
    return env


def _resolve_playbook(playbook: str, root: Path) -> str:
    path = root / playbook  # an absolute playbook stays as it is
    if not path.is_file():
        raise BadInput(
            f"playbook not found: {playbook} (looked in {root})",
            hint="give the path relative to the project, e.g. playbooks/common.yml",
        )
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """ansible-runner sets its own SIGINT and SIGTERM handlers (they cancel the run) and never
    puts Python's back: after a first run, Ctrl-C would no longer reach the controller. During a
    run its handlers act; after it, the ones before it are back."""
    if threading.current_thread() is not threading.main_thread():
        yield  # ansible-runner sets none outside the main thread
        return
    kept = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)


def _close_ptys_without_delay() -> None:
    """ansible-runner reads ansible-playbook through a pexpect pty and closes the pty only once
    the process has exited (its loop runs while the child is alive, then reads to EOF). The close
    first sleeps ptyprocess's ``delayafterclose``, 0.1 s "to give the kernel time to update the
    process status": here it waits for nothing, and it is a tenth of a second of every run (two
    or three per rollout). The sleep goes; the close still reads the child's status after it, and
    terminates a child still alive as before."""
    original = pexpect.spawn.close
    if getattr(original, "deploykit_no_delay", False):
        return

    def close(self: Any, force: bool = True) -> None:
        self.ptyproc.delayafterclose = 0.0
        original(self, force=force)

    close.deploykit_no_delay = True  # type: ignore[attr-defined]
    pexpect.spawn.close = close


_close_ptys_without_delay()


def run_playbook(
    playbook: str,
    *,
    root: Path,
    inventory: Path,
    extravars: dict[str, Any] | None = None,
    limit: str | None = None,
    tags: str | None = None,
    vault_password_file: Path | None = None,
    on_event: EventSink | Callable[[dict[str, Any]], None] | None = None,
    verbosity: int = 0,
    runs_subdir: str | None = None,
) -> RunResult:
    """Run ``playbook`` (relative to the project ``root``) against ``inventory``.

    Every event goes to ``on_event`` as ansible-runner delivers it; the caller closes its sink
    with the returned result. Input is checked (BadInput) before anything runs. The run's private
    data dir, ``<root>/.cache/runs/<UTC timestamp>-<playbook stem>/``, is kept for post-mortems
    (artifacts/<ident>/stdout and job_events); only the last :data:`KEEP_RUNS` are kept.
    ``runs_subdir`` keeps the run under ``<root>/.cache/runs/<runs_subdir>/`` instead, pruned
    among its own (a rollout's lease renewals, every few seconds, never push out or remove the
    rollout's own runs, a running one included).
    """
    root = root.resolve()
    playbook_arg = _resolve_playbook(playbook, root)
    if not inventory.exists():
        # ansible-runner would take a missing path for inline INI text and run against nothing.
        raise BadInput(f"inventory not found: {inventory}")
    if vault_password_file is not None and not vault_password_file.is_file():
        raise BadInput(f"vault password file not found: {vault_password_file}")
    envvars = _envvars(root)

    runs = root / ".cache" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    runs.chmod(0o700)
    if runs_subdir is not None:
        runs = runs / _UNSAFE_NAME_CHARS.sub("_", runs_subdir)
        runs.mkdir(mode=0o700, exist_ok=True)
    private = _new_run_dir(runs, Path(playbook_arg).stem)
    _prune_runs(runs, KEEP_RUNS, private)
    # ansible-runner would create env/ itself (0700 today); owning it here keeps that guarantee.
    (private / "env").mkdir(mode=0o700)
    ident = private.name

    collector = EventCollector()
    sink_error: list[BaseException] = []

    def handle(event: dict[str, Any]) -> bool:
        collector.feed(event)
        if on_event is not None and not sink_error:
            try:
                on_event(event)
            except Exception as error:
                # Aborting here would kill ansible-playbook mid-task and leave hosts half changed;
                # the display stops, the run finishes, then the error surfaces.
                sink_error.append(error)
        return True  # True: ansible-runner also writes the event to artifacts/job_events

    cmdline = (
        f"--vault-password-file {shlex.quote(str(vault_password_file.resolve()))}"
        if vault_password_file is not None
        else None
    )
    try:
        with _signal_handlers_kept():
            run = ansible_runner.run(
                private_data_dir=str(private),
                ident=ident,
                project_dir=str(root),
                playbook=playbook_arg,
                inventory=str(inventory.resolve()),
                # Written to env/extravars (0600, in the 0700 run dir) and passed as -e @file, so
                # the values never show on a command line (ps) or in artifacts/command.
                extravars=dict(extravars) if extravars else None,
                limit=limit,
                tags=tags,
                cmdline=cmdline,
                verbosity=verbosity or None,
                envvars=envvars,
                fact_cache_type=_FACT_CACHE_FROM_ANSIBLE_CFG,
                quiet=True,
                event_handler=handle,
            )
    finally:
        # The secrets have been read by ansible-playbook; the post-mortem does not need them.
        with contextlib.suppress(FileNotFoundError):
            (private / "env" / "extravars").unlink()

    artifacts = private / "artifacts" / ident
    rc = run.rc if isinstance(run.rc, int) else -1
    result = collector.result(
        status=str(run.status),
        rc=rc,
        artifacts_dir=artifacts if artifacts.is_dir() else None,
    )
    if sink_error:
        error = sink_error[0]
        error.add_note(
            f"deploykit: the event sink failed; the playbook run itself finished with status "
            f"{result.status}, rc {result.rc}; artifacts in {result.artifacts_dir}"
        )
        raise error
    return result
