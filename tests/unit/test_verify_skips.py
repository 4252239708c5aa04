"""The skip accounting of molecule's verify runs (tests/e2e/verify_skips.py), on JUnit reports
that pytest itself writes: a listed skip passes and is shown with its reason, any other fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from verify_skips import ALLOWED_SKIPS, Accounting, account, terminal_lines

VERIFY = """
import pytest

def test_ran():
    pass

def test_needs_mongod():
    pytest.skip("MongoDB packages unreachable here: skipped install")

@pytest.mark.skipif(True, reason="hosts of another scenario only")
def test_elsewhere():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    pass
"""


def report_of(tmp_path: Path, source: str = VERIFY) -> Path:
    """Run SOURCE as a verify would (pytest, --junitxml); the report's path."""
    (tmp_path / "test_scenario.py").write_text(textwrap.dedent(source))
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         "test_scenario.py"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert report.exists()
    return report


ALLOWED = {"demo::test_needs_mongod": "There is no mongod here: its packages cannot be fetched."}


def test_an_unlisted_skip_fails_the_scenario(tmp_path: Path) -> None:
    accounting = account("demo", report_of(tmp_path), ALLOWED)
    assert accounting.count("passed") == 3
    assert accounting.count("skipped") == 2
    assert [o.test_id for o in accounting.unlisted] == ["demo::test_elsewhere"]
    (problem,) = accounting.problems
    assert "demo::test_elsewhere skipped (hosts of another scenario only)" in problem
    assert "ALLOWED_SKIPS" in problem
    summary = "\n".join(accounting.summary())
    assert "demo: 3 passed, 2 skipped" in summary
    assert "NOT ALLOWED" in summary and "test_elsewhere" in summary


def test_listed_skips_pass_and_show_their_reason(tmp_path: Path) -> None:
    allowed = {**ALLOWED, "demo::test_else*": "Another scenario's hosts are not these."}
    accounting = account("demo", report_of(tmp_path), allowed)
    assert accounting.problems == []
    lines = terminal_lines([accounting])
    assert lines[0] == "demo: 3 passed, 2 skipped"
    text = "\n".join(lines)
    assert f"1 skipped, allowed: {ALLOWED['demo::test_needs_mongod']}" in text
    assert "pytest said: MongoDB packages unreachable here: skipped install" in text
    assert "pytest said: hosts of another scenario only" in text


def test_failures_are_counted(tmp_path: Path) -> None:
    report = report_of(tmp_path, "def test_bad():\n    assert 1 == 2\n")
    accounting = account("demo", report, ALLOWED)
    assert accounting.count("failed") == 1
    assert accounting.summary()[0] == "demo: 0 passed, 1 failed, 0 skipped"


def test_a_verify_that_ran_nothing_is_a_problem(tmp_path: Path) -> None:
    accounting = account("demo", tmp_path / "missing.xml", ALLOWED)
    assert accounting.problems == ["demo: the verifier's report lists no test: nothing verified"]


@pytest.mark.parametrize("pattern", sorted(ALLOWED_SKIPS))
def test_every_allowed_skip_has_a_reason_in_sentences(pattern: str) -> None:
    scenario, _, test = pattern.partition("::")
    assert (Path(__file__).resolve().parents[2] / "molecule" / scenario / "molecule.yml").exists()
    assert test.startswith("test_")
    reason = ALLOWED_SKIPS[pattern]
    assert reason[0].isupper() and reason.endswith("."), reason
    assert len(reason.split()) >= 8, reason


def test_the_allowed_list_stays_short() -> None:
    assert len(set(ALLOWED_SKIPS.values())) <= 5
    assert isinstance(Accounting("x", []).allowed, dict)
