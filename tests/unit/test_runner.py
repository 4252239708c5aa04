"""deploykit.runner: events → result, the two sinks, and real ansible-playbook runs on localhost."""

from __future__ import annotations

import io
import json
import signal
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from deploykit import runner
from deploykit.errors import BadInput
from deploykit.runner import (
    EventCollector,
    HostRecap,
    JsonLinesSink,
    ProgressDisplay,
    RunResult,
    TaskFailure,
    failure_message,
    result_from_events,
    run_playbook,
)

# --- synthetic events in ansible-runner's shape ---------------------------------------------

_counter = iter(range(1, 10_000))


def ev(kind: str, **data: Any) -> dict[str, Any]:
    """An event as ansible-runner hands it to event_handler."""
    event: dict[str, Any] = {
        "uuid": f"uuid-{next(_counter)}",
        "counter": 0,
        "event": kind,
        "created": "2026-01-01T00:00:00+00:00",
        "runner_ident": "test",
    }
    if kind == "verbose":
        event["stdout"] = data.pop("stdout", "")
    else:
        event["event_data"] = {"playbook": "site.yml", "play": "stack", **data}
    return event


def task_start(name: str) -> dict[str, Any]:
    return ev("playbook_on_task_start", task=name, name=name, task_action="command")


def ok(host: str, task: str, *, changed: bool = False, **res: Any) -> dict[str, Any]:
    return ev(
        "runner_on_ok",
        host=host,
        task=task,
        res={"changed": changed, **res},
        start="2026-01-01T00:00:00+00:00",
        end="2026-01-01T00:00:01+00:00",
        duration=1.0,
    )


def failed(host: str, task: str, res: dict[str, Any], *, ignore: bool = False) -> dict[str, Any]:
    return ev("runner_on_failed", host=host, task=task, res=res, ignore_errors=ignore or None)


def unreachable(host: str, task: str, msg: str) -> dict[str, Any]:
    return ev("runner_on_unreachable", host=host, task=task, res={"msg": msg, "unreachable": True})


def stats(**per_key: dict[str, int]) -> dict[str, Any]:
    keys = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed")
    data = {key: per_key.get(key, {}) for key in keys}
    return ev("playbook_on_stats", **data)


LONG_STDERR = "\n".join(f"stderr line {i}" for i in range(1, 30))

# A small run over three hosts: web1 ignores a failure, web2 fails for real, db1 is unreachable.
STREAM = [
    ev("verbose", stdout="[WARNING]: something harmless"),
    ev("playbook_on_start"),
    ev("playbook_on_play_start", name="stack", pattern="all"),
    task_start("say hello"),
    ev("runner_on_start", host="web1", task="say hello"),
    ok("web1", "say hello", msg="the token is s3cr3t"),
    ok("web2", "say hello"),
    unreachable("db1", "say hello", "Failed to connect to the host via ssh: Connection refused"),
    task_start("run migrations"),
    ev("runner_on_start", host="web1", task="run migrations"),
    failed("web1", "run migrations", {"msg": "non-zero return code", "rc": 1}, ignore=True),
    failed(
        "web2",
        "run migrations",
        {"msg": "non-zero return code", "rc": 3, "stderr": LONG_STDERR, "changed": True},
    ),
    task_start("touch marker"),
    ok("web1", "touch marker", changed=True),
    stats(
        ok={"web1": 3, "web2": 1},
        changed={"web1": 1},
        failures={"web2": 1},
        dark={"db1": 1},
        ignored={"web1": 1},
        processed={"web1": 1, "web2": 1, "db1": 1},
    ),
]


def failed_result() -> RunResult:
    return result_from_events(STREAM, status="failed", rc=2)


# --- events → RunResult ---------------------------------------------------------------------


def test_recap_comes_from_playbook_on_stats() -> None:
    result = failed_result()
    assert result.recap == {
        "db1": HostRecap(unreachable=1),
        "web1": HostRecap(ok=3, changed=1, ignored=1),
        "web2": HostRecap(ok=1, failed=1),
    }
    assert not result.ok
    assert result.failed_hosts == ["db1", "web2"]


def test_failures_skip_ignored_errors_and_keep_unreachable_hosts() -> None:
    failures = failed_result().failures
    assert [(f.host, f.task, f.unreachable) for f in failures] == [
        ("db1", "say hello", True),
        ("web2", "run migrations", False),
    ]
    assert failures[0].message == "Failed to connect to the host via ssh: Connection refused"


def test_failure_message_is_msg_then_the_end_of_stderr() -> None:
    message = failed_result().failures[1].message
    lines = message.splitlines()
    assert lines[0] == "non-zero return code"
    assert lines[-1] == "stderr line 29"
    assert len(lines) <= 4


def test_failure_message_shapes() -> None:
    # A loop reports its first failed item's message, not the item (it may be a secret).
    loop = {
        "msg": "One or more items failed",
        "results": [
            {"item": "fine", "failed": False, "msg": "ok"},
            {"item": {"password": "hunter2"}, "failed": True, "msg": "bad thing"},
        ],
    }
    assert failure_message(loop) == "bad thing"
    censored = {"censored": "the output has been hidden due to the fact that 'no_log: true'"}
    assert "no_log" in failure_message(censored)
    # A command that fails quietly on stderr is explained by its stdout.
    assert failure_message({"msg": "non-zero return code", "rc": 1, "stdout": "why"}) == (
        "non-zero return code\nwhy"
    )
    assert failure_message({}) == "failed (no message)"
    assert failure_message({"msg": ["first", "second"]}) == "first\nsecond"
    assert len(failure_message({"msg": "x" * 5000})) < 300


def test_a_rescued_failure_is_not_a_failure_of_the_run() -> None:
    events = [
        task_start("try"),
        failed("web1", "try", {"msg": "boom"}),
        task_start("rescue it"),
        ok("web1", "rescue it"),
        stats(ok={"web1": 1}, rescued={"web1": 1}, processed={"web1": 1}),
    ]
    result = result_from_events(events, status="successful", rc=0)
    assert result.ok
    assert result.failures == []
    assert result.recap["web1"].rescued == 1


def test_without_stats_the_live_counts_and_every_failure_remain() -> None:
    # A canceled run never gets its playbook_on_stats.
    result = result_from_events(STREAM[:-1], status="canceled", rc=254)
    assert result.recap["web1"] == HostRecap(ok=3, changed=1, ignored=1)
    assert result.recap["web2"].failed == 1
    assert [f.host for f in result.failures] == ["db1", "web2"]


def test_ansible_playbook_errors_outside_tasks_become_result_error() -> None:
    events = [
        ev("verbose", stdout="[ERROR]: couldn't resolve module/action 'bogus'."),
        ev("verbose", stdout="Origin: /project/site.yml:3:7"),
        ev("verbose", stdout=""),
        ev("verbose", stdout="1 - hosts: all"),
    ]
    result = result_from_events(events, status="failed", rc=4)
    assert (
        result.error
        == "[ERROR]: couldn't resolve module/action 'bogus'.\nOrigin: /project/site.yml:3:7"
    )
    assert result.recap == {}
    assert result_from_events(events, status="successful", rc=0).error is None


def test_to_dict_is_json() -> None:
    data = json.loads(json.dumps(failed_result().to_dict()))
    assert data["status"] == "failed"
    assert data["rc"] == 2
    assert data["ok"] is False
    assert data["hosts"]["web2"]["failed"] == 1
    assert data["failures"][1]["task"] == "run migrations"


def test_collector_tracks_the_current_task_per_host() -> None:
    collector = EventCollector()
    for event in STREAM[:10]:
        collector.feed(event)
    assert collector.current_task["web1"] == "run migrations"
    assert collector.play == "stack"
    assert collector.task == "run migrations"


# --- JsonLinesSink --------------------------------------------------------------------------


def test_json_lines_parse_one_by_one_and_end_with_the_recap() -> None:
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    for event in STREAM:
        sink(event)
    sink.close(failed_result())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    kinds = [line["event"] for line in lines]
    assert "verbose" not in kinds
    assert "runner_on_start" not in kinds
    assert kinds[0] == "playbook_on_start"
    recap = lines[-1]
    assert recap["event"] == "recap"
    assert recap["status"] == "failed"
    assert recap["rc"] == 2
    assert set(recap["hosts"]) == {"web1", "web2", "db1"}
    assert [f["host"] for f in recap["failures"]] == ["db1", "web2"]

    by_status = {line.get("status") for line in lines}
    assert {"ok", "changed", "ignored", "failed", "unreachable"} <= by_status
    real_failure = next(line for line in lines if line.get("status") == "failed")
    assert real_failure["host"] == "web2"
    assert real_failure["task"] == "run migrations"
    assert real_failure["msg"].startswith("non-zero return code")
    assert set(real_failure) <= {
        "event", "created", "play", "task", "host", "status", "changed", "msg",
        "start", "end", "duration", "elapsed",
    }  # fmt: skip
    assert all(isinstance(line["elapsed"], float) for line in lines if line["event"] != "recap")


def test_json_lines_do_not_copy_task_results() -> None:
    # A debug of a variable would otherwise print the variable.
    stream = io.StringIO()
    JsonLinesSink(stream)(ok("web1", "say hello", msg="the token is s3cr3t"))
    assert "s3cr3t" not in stream.getvalue()


# --- ProgressDisplay ------------------------------------------------------------------------


def plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=120, color_system=None), buffer


def test_progress_without_a_terminal_prints_task_lines_and_failures() -> None:
    console, buffer = plain_console()
    display = ProgressDisplay(console)
    for event in STREAM:
        display(event)
    during = buffer.getvalue()
    assert "TASK [stack] say hello" in during
    assert "TASK [stack] run migrations" in during
    assert "FAILED web2: run migrations: non-zero return code" in during
    assert "UNREACHABLE db1: say hello: Failed to connect" in during
    # web1's failure was ignored: no FAILED line for it; and no live-table box drawing.
    assert "web1: run migrations" not in during
    assert "┏" not in during

    display.close(failed_result())
    after = buffer.getvalue()[len(during) :]
    assert "recap" in after
    assert "failures" in after
    assert "stderr line 29" in after
    assert after.rstrip().splitlines()[-1] == "failed: db1, web2"


def test_progress_close_says_converged() -> None:
    console, buffer = plain_console()
    display = ProgressDisplay(console)
    result = RunResult(
        status="successful",
        rc=0,
        recap={"web1": HostRecap(ok=4, changed=2), "web2": HostRecap(ok=4, changed=1)},
        failures=[],
        artifacts_dir=None,
    )
    display.close(result)
    assert buffer.getvalue().rstrip().splitlines()[-1] == "converged: 2 hosts, 3 changed"


def test_progress_prints_task_names_literally() -> None:
    # Task names and messages come from playbooks and hosts; they are not rich markup.
    console, buffer = plain_console()
    display = ProgressDisplay(console)
    display(task_start("install [bold]nginx[/bold]"))
    display(failed("web1", "install [red]x", {"msg": "[/] broken"}))
    display.close(
        RunResult(
            status="failed",
            rc=2,
            recap={},
            failures=[TaskFailure("web1", "install [red]x", "[/] broken", False)],
            artifacts_dir=None,
        )
    )
    output = buffer.getvalue()
    assert "install [bold]nginx[/bold]" in output
    assert "FAILED web1: install [red]x: [/] broken" in output


def test_progress_on_a_terminal_draws_a_live_table() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    display = ProgressDisplay(console)
    for event in STREAM:
        display(event)
    display.close(failed_result())
    output = buffer.getvalue()
    assert "web2" in output
    assert "FAILED" in output
    assert "failed: db1, web2" in output


# --- input checked before anything runs -----------------------------------------------------


@pytest.fixture
def no_ansible(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kwargs: Any) -> None:
        raise AssertionError("ansible_runner.run was called")

    monkeypatch.setattr(runner.ansible_runner, "run", refuse)


@pytest.mark.usefixtures("no_ansible")
def test_missing_playbook_is_bad_input_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "hosts.ini").write_text("localhost\n")
    with pytest.raises(BadInput, match=r"playbooks/nope\.yml"):
        run_playbook("playbooks/nope.yml", root=tmp_path, inventory=tmp_path / "hosts.ini")
    assert not (tmp_path / ".cache").exists()


@pytest.mark.usefixtures("no_ansible")
def test_missing_inventory_and_vault_file_are_bad_input(tmp_path: Path) -> None:
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (tmp_path / "hosts.ini").write_text("localhost\n")
    with pytest.raises(BadInput, match="inventory"):
        run_playbook("site.yml", root=tmp_path, inventory=tmp_path / "missing.ini")
    with pytest.raises(BadInput, match="vault"):
        run_playbook(
            "site.yml",
            root=tmp_path,
            inventory=tmp_path / "hosts.ini",
            vault_password_file=tmp_path / "no-such-file",
        )
    assert not (tmp_path / ".cache").exists()


def test_host_key_checking_follows_ansible_cfg(tmp_path: Path) -> None:
    cfg = tmp_path / "ansible.cfg"
    assert runner._host_key_checking(cfg) == "True"  # Ansible's default, not ansible-runner's
    cfg.write_text("[defaults]\nhost_key_checking = False ; the lab only\n")
    assert runner._host_key_checking(cfg) == "False"


# --- real runs on localhost -----------------------------------------------------------------

SECRET = "s3cr3t-extra-var-value"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny project with its own ansible.cfg; its role is only found through that file."""
    root = tmp_path / "project"
    (root / "playbooks").mkdir(parents=True)
    (root / "ansible.cfg").write_text(
        textwrap.dedent(
            """\
            [defaults]
            roles_path = cfg_roles
            gathering = explicit
            retry_files_enabled = false
            """
        )
    )
    (root / "hosts.ini").write_text(
        "localhost ansible_connection=local"
        ' ansible_python_interpreter="{{ ansible_playbook_python }}"\n'
    )
    tasks = root / "cfg_roles" / "marker" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(
        textwrap.dedent(
            """\
            - name: a command that changes
              ansible.builtin.command: "true"
              changed_when: true
            """
        )
    )
    (root / "playbooks" / "ok.yml").write_text(
        textwrap.dedent(
            """\
            - name: converge localhost
              hosts: all
              gather_facts: false
              roles: [marker]
              tasks:
                - name: say hello
                  ansible.builtin.debug:
                    msg: "secret has {{ token | length }} characters"
                - name: a failure that is ignored
                  ansible.builtin.command: "false"
                  changed_when: false
                  ignore_errors: true
            """
        )
    )
    (root / "playbooks" / "fail.yml").write_text(
        textwrap.dedent(
            """\
            - name: fail for real
              hosts: all
              gather_facts: false
              tasks:
                - name: this one works
                  ansible.builtin.debug:
                    msg: fine
                - name: this one fails
                  ansible.builtin.shell: "echo 'disk full on /srv' >&2; exit 3"
                - name: never reached
                  ansible.builtin.debug:
                    msg: unreachable code
            """
        )
    )
    return root


def test_real_run_that_converges(project: Path) -> None:
    runs = project / ".cache" / "runs"
    runs.mkdir(parents=True)
    for i in range(25):
        (runs / f"20000101T0000{i:02d}Z-old").mkdir()
    (runs / "not-a-run").mkdir()

    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    result = run_playbook(
        "playbooks/ok.yml",
        root=project,
        inventory=project / "hosts.ini",
        extravars={"token": SECRET},
        on_event=sink,
    )
    sink.close(result)

    assert result.ok, result.to_dict()
    assert result.status == "successful"
    assert result.rc == 0
    assert result.recap == {"localhost": HostRecap(ok=3, changed=1, ignored=1)}
    assert result.failures == []

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[-1]["event"] == "recap"
    assert lines[-1]["ok"] is True
    tasks = [line["task"] for line in lines if line["event"] == "playbook_on_task_start"]
    assert tasks == ["a command that changes", "say hello", "a failure that is ignored"]
    assert SECRET not in stream.getvalue()

    # The run dir: private, kept for post-mortems, without the secret once the run is over.
    assert result.artifacts_dir is not None
    run_dir = result.artifacts_dir.parents[1]
    assert run_dir.parent == runs
    assert run_dir.name.endswith("-ok")
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "env").stat().st_mode) == 0o700
    assert (result.artifacts_dir / "stdout").is_file()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path

    # Old runs are pruned to the last 20 (this one included); other directories are left alone.
    kept = sorted(p.name for p in runs.iterdir() if p.name != "not-a-run")
    assert len(kept) == runner.KEEP_RUNS
    assert run_dir.name in kept
    assert (runs / "not-a-run").is_dir()


def test_real_run_that_fails(project: Path) -> None:
    console, buffer = plain_console()
    display = ProgressDisplay(console)
    result = run_playbook(
        "playbooks/fail.yml", root=project, inventory=project / "hosts.ini", on_event=display
    )
    display.close(result)

    assert not result.ok
    assert result.status == "failed"
    assert result.rc == 2
    assert result.recap == {"localhost": HostRecap(ok=1, failed=1)}
    assert result.failures == [
        TaskFailure(
            host="localhost",
            task="this one fails",
            message="non-zero return code\ndisk full on /srv",
            unreachable=False,
        )
    ]
    output = buffer.getvalue()
    assert "TASK [fail for real] this one fails" in output
    assert "FAILED localhost: this one fails: non-zero return code" in output
    assert "failed: localhost" in output
    assert "never reached" not in output


def test_real_run_survives_a_broken_sink(project: Path) -> None:
    seen: list[str] = []

    def broken(event: dict[str, Any]) -> None:
        seen.append(event["event"])
        if event["event"] == "playbook_on_task_start":
            raise RuntimeError("display bug")

    with pytest.raises(RuntimeError, match="display bug") as caught:
        run_playbook(
            "playbooks/ok.yml",
            root=project,
            inventory=project / "hosts.ini",
            extravars={"token": "x"},
            on_event=broken,
        )
    # The sink was dropped at its first error, but the playbook ran to its end.
    assert seen[-1] == "playbook_on_task_start"
    assert any("finished with status successful" in note for note in caught.value.__notes__)


def test_ctrl_c_reaches_the_controller_after_a_real_run(project: Path) -> None:
    """ansible-runner sets SIGINT and SIGTERM handlers that only flag its run as cancelled, and
    leaves them set: `deploykit logs -f` (which runs a playbook first) then ignored Ctrl-C."""
    # As on a terminal: a run started in the background (CI's) inherits SIGINT ignored.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        result = run_playbook(
            "playbooks/ok.yml",
            root=project,
            inventory=project / "hosts.ini",
            extravars={"token": SECRET},
        )
        assert result.ok, result.to_dict()
        after = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        assert after == before
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, inherited)
