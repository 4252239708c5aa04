"""The command line: parse, call the core, print. Decisions live in the core modules."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ansible_collections.deploykit.fleet.plugins.module_utils import maintenance as maintenance_mode
from ansible_collections.deploykit.fleet.plugins.module_utils.release import NAME_RE
from deploykit import (
    __version__,
    hooks,
    inventory,
    lab,
    logs,
    release,
    remote,
    rollout,
    runner,
    smoke,
)
from deploykit.argtypes import line_count, positive_seconds, soak_seconds
from deploykit.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInput, DeploykitError
from deploykit.project import project_root

console = Console(stderr=True)
out = Console()


def _inventory_path(arg: str | None, root: Path) -> Path:
    return Path(arg).resolve() if arg else lab.inventory_file(root)


def _parse_extra_vars(pairs: Sequence[str]) -> dict[str, str]:
    extra: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"deploykit: -e expects KEY=VALUE, got {pair!r}")
        extra[key] = value
    return extra


# --- lab ------------------------------------------------------------------------------------


def cmd_lab_up(args: argparse.Namespace) -> int:
    spec = lab.LabSpec(
        app_clones=args.app_clones, profile=args.profile, subnet=args.subnet, docstore=args.docstore
    )
    result = lab.up(spec, root=project_root(), log=console.print)
    if args.json:
        out.print_json(json.dumps(result.to_dict()))
    else:
        _print_lab_hosts(result.hosts)
        console.print(f"inventory: {result.inventory}")
        console.print("next: [bold]ansible all -m ping[/bold]   (from the repository root)")
    return EXIT_OK


def cmd_lab_down(args: argparse.Namespace) -> int:
    removed = lab.down(root=project_root(), log=console.print)
    if args.json:
        out.print_json(json.dumps(removed))
    return EXIT_OK


def cmd_lab_status(args: argparse.Namespace) -> int:
    hosts = lab.status(root=project_root())
    if args.json:
        out.print_json(json.dumps([h.to_dict() for h in hosts]))
    elif not hosts:
        console.print("no lab: run [bold]deploykit lab up[/bold]")
    else:
        _print_lab_hosts(hosts)
    return EXIT_OK


def cmd_lab_image(args: argparse.Namespace) -> int:
    tag = lab.ensure_image(log=console.print, rebuild=args.rebuild)
    out.print(tag)
    return EXIT_OK


def _print_lab_hosts(hosts: Sequence[lab.LabHost]) -> None:
    table = Table(title="lab hosts")
    for column in ("host", "groups", "address", "container", "ssh"):
        table.add_column(column)
    for host in hosts:
        table.add_row(
            host.name,
            ",".join(host.groups),
            host.address,
            host.state,
            "[green]up[/green]" if host.ssh_up else "[red]down[/red]",
        )
    out.print(table)


# --- check, run, up -------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    root = project_root()
    path = _inventory_path(args.inventory, root)
    problems = inventory.validate_inventory(path, roles_dir=root / "roles")
    if args.json:
        out.print_json(json.dumps({"inventory": str(path), "problems": [str(p) for p in problems]}))
    else:
        for problem in problems:
            out.print(str(problem), markup=False, highlight=False, soft_wrap=True)
        if not problems:
            console.print(f"inventory OK: {path}")
    return EXIT_BAD_INPUT if problems else EXIT_OK


def _run(playbook: str, args: argparse.Namespace, extravars: dict[str, str] | None = None) -> int:
    root = project_root()
    path = _inventory_path(args.inventory, root)
    problems = inventory.validate_inventory(path, roles_dir=root / "roles")
    if problems:
        for problem in problems:
            console.print(str(problem), markup=False, highlight=False, soft_wrap=True)
        console.print(f"{len(problems)} problem(s) in {path}: nothing was run")
        return EXIT_BAD_INPUT
    sink: runner.EventSink = (
        runner.JsonLinesSink(sys.stdout) if args.json else runner.ProgressDisplay(console)
    )
    result = runner.run_playbook(
        playbook,
        root=root,
        inventory=path,
        extravars=extravars,
        limit=getattr(args, "limit", None),
        tags=getattr(args, "tags", None),
        vault_password_file=getattr(args, "vault_password_file", None),
        on_event=sink,
    )
    sink.close(result)
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_build(args: argparse.Namespace) -> int:
    artifact = release.build(
        args.app.resolve(), version=args.version, out_dir=args.out.resolve(), log=console.print
    )
    if args.json:
        out.print_json(json.dumps(artifact.to_dict()))
    else:
        console.print(f"release {artifact.release_id}: {artifact.path} ({artifact.size} bytes)")
        console.print(f"manifest checksum {artifact.checksum}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    manifest = release.verify(args.artifact.resolve())
    if args.json:
        out.print_json(json.dumps(manifest))
    else:
        console.print(f"{args.artifact}: release {manifest['release_id']} verified")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args.playbook, args, _parse_extra_vars(args.extra_vars))


def cmd_provision(args: argparse.Namespace) -> int:
    extra = _parse_extra_vars(args.extra_vars)
    if args.full:
        extra["deploykit_converge_full"] = "true"
    return _run("site.yml", args, extra)


def cmd_up(args: argparse.Namespace) -> int:
    """From nothing to the whole stack serving the example application, smoke-tested."""
    root = project_root()
    spec = lab.LabSpec(
        app_clones=args.app_clones, profile=args.profile, subnet=args.subnet, docstore=args.docstore
    )
    started = time.monotonic()
    result = lab.up(spec, root=root, log=console.print)
    _print_lab_hosts(result.hosts)
    args.inventory = str(result.inventory)
    console.rule("site.yml: the infrastructure")
    rc = _run("site.yml", args)
    if rc != EXIT_OK:
        return rc
    console.rule(f"build: {args.app}")
    artifact = release.build(
        (root / args.app).resolve(), out_dir=root / ".cache" / "artifacts", log=console.print
    )
    console.rule(f"deploy: release {artifact.release_id}")
    args.vault_password_file = getattr(args, "vault_password_file", None)
    args.drain_timeout, args.ready_timeout, args.health_timeout = 30.0, 60.0, 30.0
    args.lease = rollout.DEFAULT_LEASE
    try:
        deployed = _rollouts(args).deploy(artifact.path)
    except rollout.RolloutFailed as error:
        return _refused(args, "deploy", error)
    rc = _print_rollout(args, deployed)
    if rc != EXIT_OK:
        return rc
    balancer = next(h for h in result.hosts if "lb" in h.groups)
    url = f"http://{balancer.address}"
    contract = artifact.manifest["contract"]
    for check in smoke.smoke_test(
        url, release_id=artifact.release_id, health_path=contract["health_path"]
    ):
        console.print(f"[green]ok[/green] {check.what}: {check.detail}", highlight=False)
    console.print(
        f"\n[bold green]up[/bold green] in {time.monotonic() - started:.0f} s: {url}\n"
        f"  try: curl {url}/   (a baked page: no app clone involved)\n"
        f"       curl {url}{contract['health_path']}   (the release id, the clone that answered)\n"
        f"  remove it all: deploykit down",
        highlight=False,
    )
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    return cmd_lab_down(args)


# --- rollouts ---------------------------------------------------------------------------------


#: One JSON line at a time: the lease's renewal thread logs too.
_JSON_LINES = threading.Lock()


def _json_line(obj: object) -> None:
    """One JSON object on one line of stdout (JSON lines: a script reads the last line)."""
    line = json.dumps(obj) + "\n"
    with _JSON_LINES:
        sys.stdout.write(line)
        sys.stdout.flush()


def _rollouts(args: argparse.Namespace) -> rollout.Rollouts:
    root = project_root()
    started = time.monotonic()

    def stamped(event: Mapping[str, Any]) -> dict[str, Any]:
        """An event with its wall-clock time and the seconds since the command started."""
        return {
            **event,
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "elapsed": round(time.monotonic() - started, 3),
        }

    def on_step(event: Mapping[str, Any]) -> None:
        if args.json:
            _json_line(stamped(event))
            return
        took = f" ({event['seconds']:.1f} s)" if event.get("seconds") is not None else ""
        state = "done" if event.get("status") == "done" else "..."
        console.print(
            f"  {time.monotonic() - started:6.1f} s  {event.get('host')}: {event.get('step')} "
            f"{state}{took}",
            highlight=False,
        )

    def log(line: str) -> None:
        if args.json:
            _json_line(stamped({"event": "log", "message": Text.from_markup(line).plain}))
        else:
            console.print(line, highlight=False)

    return rollout.Rollouts(
        root,
        _inventory_path(args.inventory, root),
        log=log,
        on_step=on_step,
        vault_password_file=args.vault_password_file,
        drain_timeout=args.drain_timeout,
        ready_timeout=args.ready_timeout,
        health_timeout=args.health_timeout,
        lease=args.lease,
        hooks=getattr(args, "loaded_hooks", None),
        canary_soak=getattr(args, "canary_soak", None),
    )


def _compact_table(title: str) -> Table:
    """A table that fits an 80-column terminal: a rule under the header and two spaces between
    columns (a box's borders and padding take three columns each)."""
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )


def _add_release_column(table: Table, header: str) -> None:
    """A column of short release ids: never folded, an id split over lines is not one to read."""
    table.add_column(header, no_wrap=True)


def _short_id(release_id: str | None, app: str | None = None) -> str:
    """A release id as the tables show it (release.short_release_id); '-' for none."""
    return release.short_release_id(release_id, app) if release_id else "-"


def _print_rollout(args: argparse.Namespace, result: rollout.RolloutResult) -> int:
    if args.json:
        _json_line(result.to_dict())
    else:
        # The title says the whole release id once; the rows its short form.
        table = _compact_table(f"{result.action} {result.app} {result.release}")
        table.add_column("node", overflow="fold")
        table.add_column("role")
        _add_release_column(table, "before")
        _add_release_column(table, "now")
        table.add_column("outcome", no_wrap=True)
        # The node's seconds over its steps: each step's own were printed as it ended.
        table.add_column("seconds", justify="right")
        styles = {"failed": "red", "rolled_back": "yellow", "switched": "green"}
        nodes = sorted(result.nodes.values(), key=lambda n: (n.role, n.host))
        for node in nodes:
            now = node.target if node.outcome in ("switched", "unchanged") else node.before
            table.add_row(
                node.host,
                node.role,
                _short_id(node.before, result.app),
                _short_id(now, result.app),
                Text(node.outcome, style=styles.get(node.outcome, "")),
                f"{sum(node.seconds.values()):.1f}" if node.seconds else "",
            )
        console.print(table)
        for node in nodes:
            if node.message:
                # A message is sentences: below the table, where it has the terminal's width.
                at = f" at {node.step}" if node.step else ""
                console.print(
                    f"{node.host} ({node.role}) {node.outcome}{at}: {escape(node.message[:400])}",
                    highlight=False,
                )
            if node.journal:
                # The cause, as the service said it: its unit's last journal lines.
                console.print(f"{node.host} ({node.role}): the unit's last log lines", style="bold")
                for line in node.journal:
                    console.print(f"  {escape(line)}", highlight=False)
        if result.canary:
            console.print(
                f"canary on live traffic: {escape(rollout.describe_soak(result.canary))}",
                highlight=False,
            )
        words = {
            "succeeded": "[green]done[/green]",
            "unchanged": "[green]nothing to do[/green]",
            "rolled_back": "[yellow]failed and rolled back[/yellow]",
            "failed": "[red]failed[/red]",
        }
        console.print(
            f"{result.action} {words.get(result.outcome, result.outcome)} in {result.seconds:.1f} s"
            + (f": {result.failure}" if result.failure else ""),
            highlight=False,
        )
    return EXIT_OK if result.ok else EXIT_FAILED


def _refused(args: argparse.Namespace, action: str, error: rollout.RolloutFailed) -> int:
    if args.json:
        _json_line({"event": action, "outcome": "refused", "message": str(error)})
    else:
        console.print(f"[red]{action} refused:[/red] {escape(str(error))}", highlight=False)
    return error.exit_code


def _load_hooks(args: argparse.Namespace) -> None:
    """The hooks directory and the notification URL, checked before any host is contacted."""
    args.loaded_hooks = hooks.Hooks.load(
        args.hooks,
        notify_url=args.notify or os.environ.get("DEPLOYKIT_NOTIFY_URL") or None,
        timeout=args.hook_timeout,
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    rollout.parse_batch(args.batch)
    rollout.check_lease(args.lease)
    _load_hooks(args)
    if args.artifact is not None and args.app is not None:
        raise BadInput("give --app (build it now) or --artifact (a built release), not both")
    artifact = args.artifact
    if artifact is None:
        root = project_root()
        built = release.build(
            (args.app or Path("examples/shop")).resolve(),
            out_dir=root / ".cache" / "artifacts",
            log=(lambda line: None) if args.json else console.print,
        )
        artifact = built.path
    elif not artifact.is_file():
        raise BadInput(f"--artifact {artifact}: no such file (make one with deploykit build)")
    rollouts = _rollouts(args)
    try:
        result = rollouts.deploy(
            artifact.resolve(), batch=args.batch, canary=not args.no_canary, wait=args.wait,
            take_over=args.take_over, replace=args.replace,
        )  # fmt: skip
    except rollout.RolloutFailed as error:
        return _refused(args, "deploy", error)
    return _print_rollout(args, result)


def cmd_rollback(args: argparse.Namespace) -> int:
    rollout.parse_batch(args.batch)
    rollout.check_lease(args.lease)
    _load_hooks(args)
    rollouts = _rollouts(args)
    try:
        result = rollouts.rollback(
            to=args.to, app_name=args.app_name, wait=args.wait, batch=args.batch,
            take_over=args.take_over,
        )  # fmt: skip
    except rollout.RolloutFailed as error:
        return _refused(args, "rollback", error)
    return _print_rollout(args, result)


def cmd_status(args: argparse.Namespace) -> int:
    report = _rollouts(args).status(app_name=args.app_name)
    if args.json:
        _json_line(report.to_dict())
        return EXIT_OK
    live = report.live
    # The title says the application and the whole live release id, once; the rows short ids.
    table = _compact_table(f"{report.app}: live {live or 'DRIFT'}")
    table.add_column("node", overflow="fold")
    table.add_column("role")
    _add_release_column(table, "release")
    for column in ("checksum", "service", "haproxy"):
        table.add_column(column, overflow="fold")
    for node in report.nodes:
        runs_release = node.role in ("app", "worker")
        differs = runs_release and (live is None or node.release != live)
        table.add_row(
            node.host,
            node.role,
            Text(_short_id(node.release, report.app), style="red" if differs else ""),
            (node.checksum or "-")[:12],
            node.service or "-",
            node.haproxy or "",
        )
        # current, the release the next start runs, has a row only where it is not the running
        # one: as a column it would repeat the release on every other row.
        if runs_release and node.current != node.release:
            current = _short_id(node.current, report.app)
            table.add_row("", "current", Text(current, style="red"), "", "", "")
    out.print(table)
    # A problem is sentences: below the table, where it has the terminal's width.
    for node in report.nodes:
        if node.problem:
            out.print(
                f"[red]{escape(node.host)} ({node.role}):[/red] {escape(node.problem)}",
                highlight=False,
            )
    for reason in report.drift:
        out.print(f"[red]DRIFT[/red] {reason}", highlight=False)
    for node in report.nodes:
        if node.maintenance and node.maintenance.get("enabled"):
            out.print(_maintenance_line(node.host, node.maintenance), highlight=False)
        if node.pages_bake:
            out.print(
                f"{escape(node.host)}: pages baked from live data ({escape(node.pages_bake)})",
                highlight=False,
                soft_wrap=True,
            )
    _print_floating_address(report.nodes)
    for line in report.tiers:
        colour = "" if line.healthy else "red"
        text = escape(line.text)
        out.print(f"[{colour}]{text}[/{colour}]" if colour else text, highlight=False)
    return EXIT_OK


def _print_floating_address(nodes: Sequence[rollout.NodeStatus]) -> None:
    """Which balancer holds the floating address (keepalived role): one, or a red line."""
    states = [(n.host, n.virtual_address) for n in nodes if n.virtual_address]
    if not states:
        return
    address = states[0][1]["address"]
    holders = [host for host, state in states if state.get("held")]
    if len(holders) == 1:
        out.print(f"floating address {address}: held by {escape(holders[0])}", highlight=False)
    else:
        who = ", ".join(holders) if holders else "no balancer"
        out.print(f"[red]floating address {address}: held by {escape(who)}[/red]", highlight=False)


def _maintenance_line(host: str, state: Mapping[str, Any]) -> str:
    """One balancer's maintenance mode in words (rich markup)."""
    if "error" in state:
        return f"[red]{escape(host)}: maintenance mode unknown:[/red] {escape(str(state['error']))}"
    if not state.get("enabled"):
        return f"{escape(host)}: maintenance off"
    allowed = ", ".join(state.get("allow") or []) or "none"
    pages = "baked pages still served" if state.get("pages") else "baked pages hidden"
    return (
        f"[yellow]{escape(host)}: maintenance ON[/yellow] since {state.get('since')}: other "
        f"requests get 503, Retry-After {state.get('retry_after')} s; {pages}; allowed: "
        f"{escape(allowed)}; message: {escape(str(state.get('message')))}"
    )


def cmd_maintenance(args: argparse.Namespace) -> int:
    """``on``: every balancer answers with the 503 page (but to --allow networks and, unless
    --hide-pages, baked pages); ``off``; ``status``. Changed at run time, no reload; a change is
    recorded in the history. Exit 1 when a balancer failed, or (status) when they disagree."""
    action = args.maintenance_action
    if action != "on":
        given = [
            option
            for option, value in (
                ("--message", args.message),
                ("--allow", args.allow),
                ("--retry-after", args.retry_after),
                ("--hide-pages", args.hide_pages or None),
            )
            if value is not None
        ]
        if given:
            raise BadInput(f"{', '.join(given)}: for maintenance on, not maintenance {action}")
    wanted = None
    try:
        if action == "on":
            wanted = maintenance_mode.wanted(
                True,
                message=args.message,
                allow=args.allow or (),
                retry_after=maintenance_mode.DEFAULT_RETRY_AFTER
                if args.retry_after is None
                else args.retry_after,
                pages=not args.hide_pages,
            )
        elif action == "off":
            wanted = maintenance_mode.wanted(False)
    except maintenance_mode.Problem as problem:
        raise BadInput(str(problem)) from None
    states = _rollouts(args).maintenance(wanted)
    failed = [host for host, state in states.items() if "error" in state]
    settings = {
        json.dumps({**state, "since": None, "changed": None}, sort_keys=True)
        for state in states.values()
        if "error" not in state
    }
    disagree = action == "status" and len(settings) > 1
    if args.json:
        _json_line({"balancers": states, "disagree": disagree})
    else:
        for host, state in states.items():
            line = _maintenance_line(host, state)
            if wanted is not None and "error" not in state:
                line += " (changed)" if state.get("changed") else " (it was so already)"
            out.print(line, highlight=False, soft_wrap=True)
        if disagree:
            console.print("[red]the balancers disagree[/red]: set the mode again on all of them")
    return EXIT_FAILED if failed or disagree else EXIT_OK


def cmd_bake(args: argparse.Namespace) -> int:
    """The pages baked from live data on the first worker: the last bake and the timer's next
    run; with --now, a bake first. Exit 1 when the bake run now failed (every balancer keeps the
    pages it served)."""
    answer = _rollouts(args).bake(now=args.now, timeout=args.timeout, app_name=args.app_name)
    if args.json:
        _json_line(answer)
        return EXIT_FAILED if answer["error"] else EXIT_OK
    record = answer["record"]
    out.print(_bake_line(answer["host"], record), highlight=False, soft_wrap=True)
    if answer["error"] and record.get("outcome") == "published":
        console.print(f"[red]{escape(answer['error'])}[/red]", highlight=False)
    out.print(
        f"next bake on the timer: {answer['next_run'] or 'none (no schedule)'}", highlight=False
    )
    return EXIT_FAILED if answer["error"] else EXIT_OK


def _bake_line(host: str, record: Mapping[str, Any]) -> str:
    """The last bake in words (rich markup)."""
    outcome = record.get("outcome")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(record["finished"])))
        if record.get("finished")
        else "?"
    )
    if outcome is None:
        return f"{escape(host)}: no bake yet"
    if outcome == "published":
        balancers = ", ".join(record.get("balancers") or {})
        return (
            f"[green]{escape(host)}: bake {escape(str(record.get('bake_id')))}[/green] of "
            f"{escape(str(record.get('release_id')))}: {record.get('pages')} page(s) live on "
            f"{escape(balancers)}, {when} ({record.get('seconds')} s)"
        )
    if outcome == "nothing to bake":
        return f"{escape(host)}: {escape(str(record.get('reason')))} ({when})"
    return f"[red]{escape(host)}: bake failed[/red] {when}: {escape(str(record.get('reason')))}"


def cmd_logs(args: argparse.Namespace) -> int:
    if args.grep is not None:
        try:
            re.compile(args.grep)
        except re.error as error:
            raise BadInput(f"--grep {args.grep!r} is not a regular expression: {error}") from None
    root = project_root()
    path = _inventory_path(args.inventory, root)
    # The pattern and the inventory first: bad input is refused before any host is contacted.
    targets = remote.targets_for(path, args.pattern, roles_dir=root / "roles")
    app = _rollouts(args).application(args.app_name)
    logging.getLogger("paramiko").addHandler(logging.NullHandler())

    def command_for(target: remote.SshTarget, cursor: str | None = None) -> str:
        return logs.journal_command(
            app, lines=args.lines, since=args.since, grep=args.grep, follow=cursor is not None,
            after_cursor=cursor or None, sudo=(target.user or getpass.getuser()) != "root",
        )  # fmt: skip

    width = max(len(target.host) for target in targets)

    def show(line: logs.LogLine) -> None:
        if args.json:
            _json_line(line.to_dict())
        else:
            style = "red" if line.priority is not None and line.priority <= 3 else None
            out.print(line.text(width), style=style, markup=False, highlight=False, soft_wrap=True)
        if args.follow:
            sys.stdout.flush()  # each line as it comes, into a pipe too

    def note(host: str, text: str) -> None:
        console.print(f"{host}: {text}", style="yellow", markup=False, highlight=False)

    found = logs.tail(targets, command_for, lines=args.lines, timeout=args.timeout)
    for line in found.lines:
        show(line)
    failed = dict(found.errors)
    if args.follow:
        reachable = [target for target in targets if target.host not in failed]
        console.print(
            f"following {app}'s journal on {len(reachable)} host(s); Ctrl-C ends", style="dim"
        )
        try:
            failed |= logs.follow(
                reachable,
                # A host with no line yet: from now on (the tail showed none of it).
                lambda target: command_for(target, found.cursors.get(target.host, "")),
                timeout=args.timeout, on_line=show, on_note=note, stop=threading.Event(),
            )  # fmt: skip
        except KeyboardInterrupt:
            return EXIT_OK if not failed else EXIT_FAILED
    for host, why in sorted(failed.items()):
        console.print(f"{host}: {why}", style="red", markup=False, highlight=False)
    return EXIT_FAILED if failed else EXIT_OK


def exec_command(words: Sequence[str], exec_options: Collection[str]) -> str:
    """The remote command from the words after PATTERN, joined by spaces as ssh(1) joins them
    for the remote user's shell; a first word among ``exec_options`` was misplaced."""
    words = list(words)
    if words and words[0] == "--":  # some Pythons' argparse keep the separator
        words = words[1:]
    elif words and words[0] in exec_options:
        raise BadInput(
            f"{words[0]} after PATTERN would be sent to the hosts as the command; put exec's "
            "options before PATTERN: deploykit exec [OPTIONS] PATTERN -- CMD"
        )
    if not " ".join(words).strip():
        raise BadInput("no command given; put it after the pattern: deploykit exec app -- hostname")
    return " ".join(words)


def cmd_exec(args: argparse.Namespace) -> int:
    command = exec_command(args.command, args.exec_options)
    root = project_root()
    path = _inventory_path(args.inventory, root)
    targets = remote.targets_for(path, args.pattern, roles_dir=root / "roles")
    # paramiko logs connection errors (with addresses) at ERROR: the report says what failed.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    result = remote.run_on_targets(targets, command, timeout=args.timeout)
    if args.json:
        _json_line(result.to_dict())
    else:
        out.print(format_exec_report(result, lines=args.lines), soft_wrap=True)
    return EXIT_OK if result.ok else EXIT_FAILED


def format_exec_report(result: remote.ExecResult, *, lines: int | None = None) -> Text:
    """exec's report for people: one block per host (its name, exit code or error, then its
    stdout and stderr, indented: every line, or the last ``lines``), and a summary line."""
    report = Text()
    for host in result.hosts:
        report.append(f"{host.host}  ", style="bold")
        if host.error is not None:
            report.append(f"error: {remote.printable(host.error)}\n", style="red")
        else:
            report.append(f"rc {host.rc}\n", style="green" if host.rc == 0 else "red")
        for name, text in (("stdout", host.stdout), ("stderr", host.stderr)):
            every = text.splitlines()
            kept = every if lines is None else every[len(every) - lines :] if lines else []
            if name == "stderr" and kept:
                report.append("  stderr:\n", style="yellow")
            if len(every) > len(kept):
                left = len(every) - len(kept)
                report.append(f"    ... {left} earlier {name} line(s) not shown\n", style="dim")
            for line in kept:
                report.append(f"    {remote.printable(line)}\n")
    count, failed = len(result.hosts), result.failed
    if not failed:
        report.append(f"{count} host(s): all exited 0", style="green")
    else:
        summary = f"{count - len(failed)} ok, {len(failed)} failed: {', '.join(failed)}"
        report.append(f"{count} host(s): {summary}", style="red")
    return report


def cmd_releases(args: argparse.Namespace) -> int:
    rollouts = _rollouts(args)
    records = rollouts.ledger("history", "show", f"--limit={args.limit}").get("records") or []
    if args.json:
        _json_line({"records": records})
        return EXIT_OK
    # The application, once: in the title when the history names one, else in each record's
    # action. Either way a record's ids need not repeat it.
    apps = {str(record["app"]) for record in records if record.get("app")}
    only_app = next(iter(apps)) if len(apps) == 1 else None
    table = _compact_table(f"{only_app + ': ' if only_app else ''}deploy history (oldest first)")
    table.add_column("when", no_wrap=True)
    table.add_column("who", overflow="fold")
    table.add_column("action")
    # The "to" under the "from", in one column: two columns of ids would not fit 80.
    _add_release_column(table, "from → to")
    table.add_column("outcome", no_wrap=True)
    table.add_column("s", justify="right")
    notes: list[tuple[str, str]] = []
    for record in records:
        when = str(record.get("recorded", ""))
        app = str(record["app"]) if record.get("app") else None
        action = str(record.get("action", ""))
        before, after = record.get("from"), record.get("to")
        moved = f"{_short_id(before, app)}\n→ {_short_id(after, app)}" if before or after else "-"
        table.add_row(
            when,
            str(record.get("who", "")),
            f"{action} {app}" if app and not only_app else action,
            moved,
            str(record.get("outcome", "")),
            str(record.get("seconds", "")),
        )
        note = str(
            record.get("failure") or _lock_record_note(record) or _maintenance_record_note(record)
        )
        if note:
            notes.append((when, note[:200]))
    out.print(table)
    # A failure is sentences: below the table, where it has the terminal's width, by its time.
    for when, note in notes:
        out.print(f"{escape(when)}: {escape(note)}", highlight=False)
    return EXIT_OK


def _lock_record_note(record: Mapping[str, Any]) -> str:
    """What a "lock release" or "lock take-over" record removed: the holder, its last renewal."""
    holder = record.get("holder")
    if not isinstance(holder, Mapping):
        return ""
    return (
        f"removed {holder.get('who', '?')}'s lock ({holder.get('command', '?')} "
        f"{holder.get('release') or ''}), last renewed {record.get('renewed', '?')} s before"
        + (" (stale)" if record.get("stale", True) else " (live)")
    )


def _maintenance_record_note(record: Mapping[str, Any]) -> str:
    """What a "maintenance on" record set: its message and allowed networks, and where."""
    if record.get("action") != "maintenance on":
        return ""
    allowed = ", ".join(record.get("allow") or []) or "none"
    where = ", ".join(record.get("hosts") or [])
    return f"maintenance on {where}: {record.get('message')!r}, allowed: {allowed}"


def cmd_lock(args: argparse.Namespace) -> int:
    """``lock status``: the lease in words (holder, age, last renewal, live or STALE). ``lock
    release``: a stale lease is released; a live one is refused (exit 1) unless --force; either
    release is recorded in the history."""
    if args.force and args.lock_action != "release":
        raise BadInput(f"--force is for lock release, not lock {args.lock_action}")
    rollouts = _rollouts(args)
    if args.lock_action == "status":
        answer = rollouts.ledger("lock", "status")
        if args.json:
            _json_line(answer)
        else:
            out.print(rollout.describe_lease(answer), highlight=False, soft_wrap=True)
        return EXIT_OK
    answer = rollouts.release_lock(force=args.force)
    refused = not answer.get("released") and answer.get("holder") is not None
    if args.json:
        _json_line(answer)
    elif answer.get("released"):
        how = "forced: " if answer.get("forced") else ""
        out.print(
            f"released ({how}it was {rollout.describe_lease({'held': True, **answer})}); "
            "recorded in the history",
            highlight=False,
            soft_wrap=True,
        )
    elif refused:
        console.print(
            f"[red]not released:[/red] the deploy lock is "
            f"{escape(rollout.describe_lease({'held': True, **answer}))}\n"
            "  hint: its controller renews it, so its rollout is running; if you know that "
            "controller is dead, wait until the lease is stale (deploykit lock status), or "
            "release it now: deploykit lock release --force (recorded in the history)",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print("the lock was free")
    return EXIT_FAILED if refused else EXIT_OK


# --- parser ---------------------------------------------------------------------------------


def _add_lab_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app-clones",
        type=int,
        default=None,
        metavar="N",
        help="number of app clones (default: 3 for the full and ha profiles, 1 for small)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(lab.PROFILES),
        default="full",
        help="full: lb, app1..N, worker1, cache1, db1, queue1; small: everything on two hosts; "
        "ha: no single point of failure (lb1-2 on a floating address, worker1-2, cache1-3 with "
        "Sentinel, a RabbitMQ cluster queue1-3, db1 and its standby db2)",
    )
    parser.add_argument(
        "--docstore",
        choices=lab.DOCSTORE_ENGINES,
        default=lab.DEFAULT_LAB_DOCSTORE,
        help="the document database engine (default postgresql: MongoDB's packages are often "
        "unreachable from a lab)",
    )
    parser.add_argument(
        "--subnet",
        default=lab.DEFAULT_SUBNET,
        help=f"the lab network's IPv4 subnet (default {lab.DEFAULT_SUBNET})",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--inventory", help="inventory file (default: the lab's)")
    parser.add_argument("-l", "--limit", help="limit to these hosts or groups")
    parser.add_argument("-t", "--tags", help="only tasks with these tags (comma-separated)")
    parser.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra variable (repeatable)",
    )
    parser.add_argument("--vault-password-file", type=Path, help="file holding the vault password")
    parser.add_argument("--json", action="store_true", help="print events and recap as JSON lines")


def _add_inventory_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--inventory", help="inventory file (default: the lab's)")
    parser.add_argument("--vault-password-file", type=Path, help="file holding the vault password")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(
        drain_timeout=30.0, ready_timeout=60.0, health_timeout=30.0, lease=rollout.DEFAULT_LEASE
    )


def _add_rollout_options(parser: argparse.ArgumentParser) -> None:
    _add_inventory_options(parser)
    parser.add_argument(
        "--hooks",
        type=Path,
        metavar="DIR",
        help="run the executables of DIR named pre-deploy (a failure refuses the rollout before "
        "anything changes), post-deploy, post-rollback and on-failure, with DEPLOYKIT_* "
        "variables (see the README)",
    )
    parser.add_argument(
        "--hook-timeout",
        type=positive_seconds,
        default=hooks.DEFAULT_HOOK_TIMEOUT,
        metavar="SECONDS",
        help="how long a hook may run before it is killed "
        f"(default {hooks.DEFAULT_HOOK_TIMEOUT:g})",
    )
    parser.add_argument(
        "--notify",
        metavar="URL",
        help="POST the summary JSON to URL after the rollout (default: $DEPLOYKIT_NOTIFY_URL); "
        f"{hooks.NOTIFY_TIMEOUT:g} s at most, never fails the rollout, the URL never printed",
    )
    parser.add_argument(
        "--batch",
        default=rollout.DEFAULT_BATCH,
        metavar="N|P%",
        help="clones switched at a time after the canary: a number or a percentage of the clones "
        f"(default {rollout.DEFAULT_BATCH.replace('%', '%%')})",
    )
    parser.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=3600.0,
        default=0.0,
        metavar="SECONDS",
        help="queue behind a rollout that holds the lock (default: refuse at once; "
        "--wait alone waits up to an hour)",
    )
    parser.add_argument(
        "--take-over",
        action="store_true",
        help="take over the deploy lock if its lease is STALE (its controller stopped renewing "
        "it: presumed dead), never a live one; recorded in the history. The rollout then returns "
        "the clones the dead one left out of service. With --wait: wait for a live holder, take "
        "over once its lease turns stale",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=rollout.DEFAULT_LEASE,
        metavar="SECONDS",
        help="the deploy lock's lease: renewed every SECONDS/4 while this rollout runs, stale "
        f"(taken over by --take-over) once not renewed for SECONDS (default "
        f"{rollout.DEFAULT_LEASE:.0f}, at least {rollout.MIN_LEASE:.0f})",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a clone's requests may take to finish before it leaves (default 30)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long HAProxy's check may take to see a switched clone UP (default 60)",
    )
    parser.add_argument(
        "--health-timeout",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="the health gate's deadline: how long a restarted clone has, in all, to report the "
        "new release on its health path (default 30)",
    )


def _application_name(text: str) -> str:
    if not NAME_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an application name ([tool.deploykit] name: lowercase letters, "
            "digits and '-', starting with a letter)"
        )
    return text


def _add_bake_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bake = commands.add_parser(
        "bake",
        help="the pages baked from live data: the last bake; --now bakes and publishes them",
        description="The baked pages, re-baked from live data on the first worker (on its timer, "
        "after each deploy, and with --now): the live release's bake runs against the live "
        "services, then the pages go live on every balancer at once, or on none. Shows the last "
        "bake and the timer's next run. Exit code: 0; 1 when the bake run now failed (every "
        "balancer keeps the pages it served; the reason is shown); 2 for bad input.",
    )
    bake.add_argument("--now", action="store_true", help="bake and publish now, and wait for it")
    bake.add_argument(
        "--timeout",
        type=positive_seconds,
        default=600.0,
        metavar="S",
        help="--now: seconds the bake may take before it is stopped (default 600)",
    )
    bake.add_argument("--app-name", help="the application (default: from the history)")
    _add_inventory_options(bake)
    bake.set_defaults(func=cmd_bake)


def _add_rollout_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deploy = commands.add_parser(
        "deploy", help="roll a release onto every clone: canary, batches, drain, health gates"
    )
    source = deploy.add_mutually_exclusive_group()
    source.add_argument("--app", type=Path, help="build this application now and deploy it")
    source.add_argument("--artifact", type=Path, help="deploy this artifact (deploykit build)")
    _add_rollout_options(deploy)
    deploy.add_argument("--no-canary", action="store_true", help="no single-clone canary first")
    deploy.add_argument(
        "--canary-soak",
        type=soak_seconds,
        metavar="SECONDS",
        help="the canary serves live traffic this long, then is judged on its 5xx rate and "
        "response time against the old release's (HAProxy's statistics); worse, the deploy "
        "returns as after a failed health gate (default: the inventory's deploykit_canary_soak, "
        "else 0: no soak)",
    )
    deploy.add_argument(
        "--replace",
        metavar="APP",
        type=_application_name,
        help="move the fleet from APP (the application it serves) to this one, through the same "
        "drained, health-gated switch: on each clone APP is stopped and disabled as the new one "
        "starts; a failure returns every touched clone to APP. Without it, a deploy of another "
        "application than the fleet serves is refused",
    )
    deploy.set_defaults(func=cmd_deploy)

    rollback = commands.add_parser(
        "rollback", help="the same rolling switch back to a kept release (default: the previous)"
    )
    rollback.add_argument("--to", metavar="RELEASE", help="the release to return to")
    rollback.add_argument("--app-name", help="the application (default: from the history)")
    _add_rollout_options(rollback)
    rollback.set_defaults(func=cmd_rollback)

    status = commands.add_parser("status", help="what runs where, as the nodes report it; DRIFT")
    status.add_argument("--app-name", help="the application (default: from the history)")
    _add_inventory_options(status)
    status.set_defaults(func=cmd_status)

    logs_parser = commands.add_parser(
        "logs",
        help="the application's journal from every host of a group, merged by time",
        description="Show the journal of the application's units (APP-web, APP-worker, and "
        "systemd's lines about them) from every host PATTERN names (a group, a host, all, or "
        "several separated by commas), merged by time, each line with its host. Exit code: 0, "
        "1 when a host could not be read, 2 for bad input.",
    )
    logs_parser.add_argument("pattern", metavar="PATTERN", help="a group, a host, all, or a,b,c")
    logs_parser.add_argument("--app-name", help="the application (default: from the history)")
    logs_parser.add_argument(
        "--since",
        type=logs.parse_since,
        metavar="WHEN",
        help="only lines since WHEN: a duration back from now (30s, 10m, 2h, 1d) or a time "
        "(2026-12-04T10:00, ISO 8601; without a zone, this machine's)",
    )
    logs_parser.add_argument(
        "--grep", metavar="REGEX", help="only lines whose message matches REGEX (journalctl -g)"
    )
    logs_parser.add_argument(
        "-n",
        "--lines",
        type=line_count,
        default=logs.DEFAULT_LINES,
        metavar="N",
        help=f"the newest N lines of all hosts together (default {logs.DEFAULT_LINES}; -n 0 -f: "
        "only the lines to come)",
    )
    logs_parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new lines as they come, until Ctrl-C",
    )
    logs_parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=30.0,
        metavar="S",
        help="seconds each host may take to answer (following: to connect) (default 30)",
    )
    _add_inventory_options(logs_parser)
    logs_parser.set_defaults(func=cmd_logs)

    maintenance = commands.add_parser(
        "maintenance",
        help="maintenance mode on every balancer: a 503 page with Retry-After, set at run time",
        description="on: every balancer answers with a 503 page and Retry-After, except to the "
        "--allow networks (they reach the app) and, unless --hide-pages, for GET and HEAD of the "
        "baked pages; off; status. Changed at run time through HAProxy's runtime API: no reload, "
        "no connection cut. A change is recorded in the deploy history. Exit code: 0; 1 when a "
        "balancer failed, or (status) when the balancers disagree; 2 for bad input.",
    )
    maintenance.add_argument(
        "maintenance_action", choices=["on", "off", "status"], metavar="on|off|status"
    )
    maintenance.add_argument(
        "--message",
        metavar="TEXT",
        help=f"on: the page's text (plain text, at most {maintenance_mode.MESSAGE_CHARS} "
        f"characters; default: {maintenance_mode.DEFAULT_MESSAGE!r})",
    )
    maintenance.add_argument(
        "--allow",
        action="append",
        metavar="CIDR",
        help="on: a network (address or CIDR) that still reaches the app (repeatable)",
    )
    maintenance.add_argument(
        "--retry-after",
        type=int,
        metavar="SECONDS",
        help=f"on: the Retry-After header (default {maintenance_mode.DEFAULT_RETRY_AFTER})",
    )
    maintenance.add_argument(
        "--hide-pages",
        action="store_true",
        help="on: the baked pages get the 503 page too (default: still served)",
    )
    _add_inventory_options(maintenance)
    maintenance.set_defaults(func=cmd_maintenance)

    releases = commands.add_parser("releases", help="the deploy history kept on the balancer")
    releases.add_argument("--limit", type=int, default=20, help="the last N records (default 20)")
    _add_inventory_options(releases)
    releases.set_defaults(func=cmd_releases)

    lock = commands.add_parser(
        "lock",
        help="the deploy lock on the balancer: its holder, age, last renewal, live or STALE",
    )
    lock.add_argument("lock_action", choices=["status", "release"], metavar="status|release")
    lock.add_argument(
        "--force",
        action="store_true",
        help="release: release a LIVE lease too (default: only a stale one); recorded in the "
        "history",
    )
    _add_inventory_options(lock)
    lock.set_defaults(func=cmd_lock)


def _add_exec_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    exec_parser = commands.add_parser(
        "exec",
        help="run a shell command on every host of a group, in parallel over SSH",
        usage="%(prog)s [-h] [-i INVENTORY] [--json] [--timeout S] [--lines N] PATTERN -- CMD...",
        description="Run CMD on every host PATTERN names (a group, a host name, all, or several "
        "separated by commas), in parallel over SSH as the inventory's ansible_user (through the "
        "jump hosts of a ProxyJump in its ssh arguments). Host keys are checked against the "
        "inventory's known_hosts; unknown hosts are refused. Exit code: 0 when every host exited "
        "0, 1 when any failed or was unreachable, 2 for bad input.",
        epilog="CMD is run by the remote user's shell, its words joined by spaces as ssh does: "
        "quote it to keep your local shell from expanding it, e.g. "
        "deploykit exec app -- 'systemctl is-active shop-web'",
    )
    options = [
        exec_parser.add_argument("-i", "--inventory", help="inventory file (default: the lab's)"),
        exec_parser.add_argument(
            "--json",
            action="store_true",
            help='print {"hosts": {HOST: {rc, stdout, stderr, error}}, "failed": [HOST...]}, with '
            "the whole output",
        ),
        exec_parser.add_argument(
            "--timeout",
            type=positive_seconds,
            default=remote.DEFAULT_TIMEOUT,
            metavar="S",
            help="seconds each host may take, connection included "
            f"(default {remote.DEFAULT_TIMEOUT:g})",
        ),
        exec_parser.add_argument(
            "--lines",
            type=line_count,
            metavar="N",
            help="show only the last N lines of each host's stdout and stderr (default: every "
            "line)",
        ),
    ]
    exec_parser.add_argument("pattern", metavar="PATTERN", help="a group, a host, all, or a,b,c")
    # REMAINDER, not "*": argparse drops every "--" from a "*" list, even one meant for the host.
    exec_parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command"
    )
    # exec's options, found first among the command's words, were misplaced after PATTERN.
    misplaced = ["-h", "--help", *(name for option in options for name in option.option_strings)]
    exec_parser.set_defaults(func=cmd_exec, exec_options=frozenset(misplaced))


def _add_playbook_commands(commands: Any) -> None:
    provision = commands.add_parser("provision", help="converge site.yml on the inventory")
    _add_run_options(provision)
    provision.add_argument(
        "--full",
        action="store_true",
        help="converge every role in full, also where the host's record says it already has the "
        "role's configuration (a change made through a service's own API is not in the record)",
    )
    provision.set_defaults(func=cmd_provision)

    run = commands.add_parser("run", help="run one playbook of this project")
    run.add_argument("playbook", help="path relative to the project, e.g. playbooks/common.yml")
    _add_run_options(run)
    run.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploykit",
        description="Build the scalable web stack with Ansible and roll releases onto it.",
    )
    parser.add_argument("--version", action="version", version=f"deploykit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", help="create the lab, converge site.yml, build and deploy the app, smoke-test it"
    )
    _add_lab_options(up)
    up.add_argument(
        "--app",
        type=Path,
        default=Path("examples/shop"),
        help="the application to deploy (default: examples/shop)",
    )
    _add_run_options(up)
    up.set_defaults(func=cmd_up)

    down = commands.add_parser("down", help="remove the lab and everything it generated")
    down.add_argument("--json", action="store_true")
    down.set_defaults(func=cmd_down)

    lab_parser = commands.add_parser("lab", help="the lab of Debian 12 hosts in Docker")
    lab_commands = lab_parser.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    lab_up = lab_commands.add_parser("up", help="create (or keep) the lab's hosts and inventory")
    _add_lab_options(lab_up)
    lab_up.add_argument("--json", action="store_true")
    lab_up.set_defaults(func=cmd_lab_up)
    lab_down = lab_commands.add_parser("down", help="remove containers, network, keys, inventory")
    lab_down.add_argument("--json", action="store_true")
    lab_down.set_defaults(func=cmd_lab_down)
    lab_status = lab_commands.add_parser("status", help="show the lab's hosts")
    lab_status.add_argument("--json", action="store_true")
    lab_status.set_defaults(func=cmd_lab_status)
    lab_image = lab_commands.add_parser("image", help="build (or find) the base image; print it")
    lab_image.add_argument("--rebuild", action="store_true", help="build even if it exists")
    lab_image.set_defaults(func=cmd_lab_image)

    check = commands.add_parser("check", help="validate an inventory; nothing is contacted")
    check.add_argument("-i", "--inventory", help="inventory file (default: the lab's)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)

    build = commands.add_parser("build", help="build one release artifact of an application")
    build.add_argument(
        "--app",
        type=Path,
        default=Path("examples/shop"),
        help="the application's directory (default: examples/shop)",
    )
    build.add_argument("--version", help="release version (default: the project's version)")
    build.add_argument(
        "--out",
        type=Path,
        default=Path(".cache/artifacts"),
        help="where the artifact is written (default: .cache/artifacts)",
    )
    build.add_argument("--json", action="store_true")
    build.set_defaults(func=cmd_build)

    verify = commands.add_parser("verify", help="check an artifact against its manifest")
    verify.add_argument("artifact", type=Path)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_verify)

    _add_playbook_commands(commands)
    _add_rollout_commands(commands)
    _add_bake_command(commands)
    _add_exec_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except DeploykitError as error:
        # The message is text, not markup: "[tool.deploykit]" must print as it is.
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        return error.exit_code
    except KeyboardInterrupt:
        console.print("interrupted")
        return EXIT_FAILED
    return rc
