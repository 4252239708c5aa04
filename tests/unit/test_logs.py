"""deploykit.logs: --since, the hosts' journalctl command, its JSON lines, the merge."""

from __future__ import annotations

import argparse
import json
import shlex
from datetime import UTC, datetime, timedelta

import pytest

from deploykit import logs
from deploykit.remote import HostResult


def entry(microseconds: int, message: object, **fields: object) -> str:
    return json.dumps(
        {"__REALTIME_TIMESTAMP": str(microseconds), "__CURSOR": f"c{microseconds}",
         "MESSAGE": message, "PRIORITY": "6", **fields}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("given", "expected"),
    [("30s", "-30s"), ("10m", "-600s"), ("2h", "-7200s"), ("1d", "-86400s"), (" 5 m ", "-300s")],
)
def test_since_a_duration_back_from_now(given: str, expected: str) -> None:
    assert logs.parse_since(given) == expected


def test_since_a_time_in_utc_whatever_its_zone() -> None:
    assert logs.parse_since("2026-12-04T10:00Z") == "2026-12-04 10:00:00 UTC"
    assert logs.parse_since("2026-12-04T11:30:05+01:00") == "2026-12-04 10:30:05 UTC"
    # Without a zone: this machine's.
    local = datetime(2026, 12, 4, 10, 0).astimezone()
    assert logs.parse_since("2026-12-04T10:00") == local.astimezone(UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


@pytest.mark.parametrize("given", ["yesterday", "10", "-5m", "5 weeks", "", "2026-13-01"])
def test_since_anything_else_is_refused(given: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected a duration"):
        logs.parse_since(given)


def test_the_command_reads_the_applications_units_only() -> None:
    words = shlex.split(logs.journal_command("shop", lines=50))
    assert words[:2] == ["env", "SYSTEMD_COLORS=0"]
    assert words[2] == "journalctl"
    assert "--unit=shop-web.service" in words and "--unit=shop-worker@*.service" in words
    assert "--unit=shop-worker.service" in words  # a worker unit from before the unit per release
    assert "--lines=50" in words and "--output=json" in words
    assert "--reverse" in words  # the newest 50, not the oldest
    assert not any(word.startswith(("--since", "--grep", "--follow")) for word in words)


def test_the_command_quotes_what_the_operator_gave() -> None:
    command = logs.journal_command(
        "shop", lines=5, since="2026-12-04 10:00:00 UTC", grep="a b'; rm -rf /", sudo=True
    )
    words = shlex.split(command)
    assert words[:2] == ["sudo", "-n"]
    assert "--since=2026-12-04 10:00:00 UTC" in words
    assert "--grep=a b'; rm -rf /" in words


def test_following_goes_on_from_the_cursor() -> None:
    words = shlex.split(logs.journal_command("shop", lines=5, follow=True, after_cursor="s=1;i=2"))
    assert words[-2:] == ["--after-cursor=s=1;i=2", "--follow"]
    assert "--lines=5" not in words  # the cursor says where, not a count
    assert "--reverse" not in words  # journalctl refuses it with --follow


def test_a_journal_line() -> None:
    line = logs.parse_line(
        "app1", entry(1_796_379_949_438_110, "hello", _SYSTEMD_UNIT="shop-web.service")
    )
    assert line is not None
    assert (line.host, line.unit, line.priority, line.message) == (
        "app1",
        "shop-web.service",
        6,
        "hello",
    )
    assert line.when == "2026-12-04T10:25:49.438Z"
    assert line.to_dict() == {
        "host": "app1", "time": line.when, "unit": "shop-web.service", "priority": 6,
        "message": "hello",
    }  # fmt: skip
    assert line.text(5) == f"{line.when} app1  shop-web: hello"


def test_systemds_own_line_about_the_unit_names_the_unit() -> None:
    raw = entry(1, "Started shop-web.service", UNIT="shop-web.service", _SYSTEMD_UNIT="init.scope")
    line = logs.parse_line("app1", raw)
    assert line is not None and line.unit == "shop-web.service"


def test_a_message_that_is_not_utf8_and_control_characters() -> None:
    line = logs.parse_line("app1", entry(1, [104, 105, 0xFF, 27, 91, 50, 74]))
    assert line is not None
    assert line.message == "hi\ufffd\x1b[2J"
    assert "\x1b" not in line.text() and "\\x1b[2J" in line.text()


@pytest.mark.parametrize("raw", ["", "sudo: a password is required", "[1, 2]", '{"MESSAGE": "x"}'])
def test_anything_but_a_journal_line_is_none(raw: str) -> None:
    assert logs.parse_line("app1", raw) is None


def test_merge_orders_by_time_and_keeps_the_newest() -> None:
    lines = [
        logs.LogLine("app2", 3.0, "u", 6, "c"),
        logs.LogLine("app1", 1.0, "u", 6, "a"),
        logs.LogLine("app1", 4.0, "u", 6, "d"),
        logs.LogLine("app3", 2.0, "u", 6, "b"),
    ]
    assert [line.message for line in logs.merge(lines, 10)] == ["a", "b", "c", "d"]
    assert [line.message for line in logs.merge(lines, 2)] == ["c", "d"]


def test_what_counts_as_a_host_that_could_not_be_read() -> None:
    failure = logs._journal_failure
    assert failure(HostResult("a", 0, "", "")) is None
    # --grep found nothing: exit 1, nothing said.
    assert failure(HostResult("a", 1, "", "")) is None
    assert failure(HostResult("a", 1, "", "Bad pattern\n")) == "journalctl exited 1: Bad pattern"
    assert failure(HostResult("a", None, error="timed out")) == "timed out"
    assert failure(HostResult("a", 1, "", "sudo: a password is required\n")) == (
        "journalctl exited 1: sudo: a password is required"
    )


def test_since_times_are_in_the_past_or_future_alike() -> None:
    # A time ahead of now is still a time (journalctl shows nothing yet): not refused.
    ahead = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    assert logs.parse_since(ahead.isoformat()) == ahead.strftime("%Y-%m-%d %H:%M:%S UTC")
