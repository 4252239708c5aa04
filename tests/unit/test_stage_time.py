"""scripts/stage-time: CI's table of stage times, with how busy the machine's cores were."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from deploykit.project import project_root

SCRIPT = project_root(Path(__file__).parent) / "scripts" / "stage-time"
CORES = os.cpu_count() or 1


def report(lines: list[str], tmp_path: Path) -> list[str]:
    record = tmp_path / "stages"
    record.write_text("".join(f"{line}\n" for line in lines))
    done = subprocess.run(
        [str(SCRIPT), "--report", str(record)], capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


def test_each_stage_shows_its_share_of_the_cores_and_the_total_the_floor(tmp_path: Path) -> None:
    # lint: 100 s, busy one core's worth; pytest: 200 s, every core busy.
    lines = report(
        [f"lint\t100.0\t0\t{100.0}", f"pytest\t200.0\t0\t{200.0 * CORES}",
         "  pytest: unit\t50.0\t0\t25.0", "  pytest: molecule (span)\t150.0\t0"],
        tmp_path,
    )  # fmt: skip
    table = {line[:28].strip(): line[28:] for line in lines[1:]}
    assert f"busy {100 / CORES:3.0f} %" in table["lint"], lines
    assert "busy 100 %" in table["pytest"], lines
    assert f"busy {100 * 25 / (50 * CORES):3.0f} %" in table["pytest: unit"], lines
    assert "busy" not in table["pytest: molecule (span)"], lines
    # The parts are not counted twice: the total is the stages', and so is the floor.
    busy = 100.0 + 200.0 * CORES
    assert f"busy {100 * busy / (300 * CORES):3.0f} %" in table["total"], lines
    assert lines[-1] == (
        f"cpu: {busy:.0f} busy core-seconds on {CORES} cores: this work takes at least "
        f"{busy / CORES / 60:.1f} min here"
    ), lines


def test_a_record_without_the_busy_column_is_shown_without_it(tmp_path: Path) -> None:
    lines = report(["engine\t3.0\t0", "venv\t30.0\t1"], tmp_path)
    assert lines[1].split() == ["engine", "3"], lines
    assert lines[2].split() == ["venv", "30", "(exit", "1)"], lines
    assert not any(line.startswith("cpu:") for line in lines), lines


def test_a_stage_records_the_machines_busy_seconds_beside_its_time(tmp_path: Path) -> None:
    record = tmp_path / "stages"
    env = {**os.environ, "DEPLOYKIT_STAGE_TIMES": str(record)}
    # About a second of one core's work: the busy column counts at least most of it.
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"
    done = subprocess.run(
        [str(SCRIPT), "burn", "python3", "-c", burn], env=env, capture_output=True, check=False
    )
    assert done.returncode == 0
    name, seconds, rc, busy = record.read_text().rstrip("\n").split("\t")
    assert (name, rc) == ("burn", "0")
    assert float(seconds) >= 0.9
    assert float(busy) >= 0.8, record.read_text()


def test_a_stage_run_beside_the_others_is_shown_but_not_added_to_the_total(tmp_path: Path) -> None:
    lines = report(
        ["lint\t40.0\t0\t40.0", "shop-test (beside)\t80.0\t0\t10.0", "pytest\t100.0\t0"], tmp_path
    )
    table = {line[:28].strip(): line[28:].split() for line in lines[1:-1]}
    assert table["shop-test (beside)"] == ["80"], lines
    assert table["total"][0] == "140", lines


BESIDE = SCRIPT.parent / "beside"


def beside(background: str, main: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BESIDE), "the job", "sh", "-c", background, "--", "sh", "-c", main]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)


def test_beside_shows_the_background_output_after_the_main_ones_and_fails_with_either() -> None:
    done = beside("echo early; sleep 0.5; echo late; exit 3", "sleep 0.2; echo main")
    assert done.returncode == 3
    out = done.stdout
    assert out.index("main") < out.index("=== the job (run beside the rest): exit 3 ===")
    assert out.index("exit 3 ===") < out.index("early") < out.index("late"), out
    # The main command's failure wins: it is the one the run was about.
    assert beside("exit 3", "exit 4").returncode == 4
    assert beside("true", "true").returncode == 0
