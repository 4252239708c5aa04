"""Each role's README shows its variables as scripts/role-docs renders them from the role's
meta/argument_specs.yml, the one place they are written (issue 15)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploykit.project import project_root

ROOT = project_root()
SCRIPT = ROOT / "scripts" / "role-docs"
ROLES = sorted(p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/argument_specs.yml"))

BEGIN = (
    "<!-- BEGIN role-docs: generated from meta/argument_specs.yml by scripts/role-docs; "
    "edit the spec, not this table -->"
)
END = "<!-- END role-docs -->"


def role_docs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # The interpreter running the tests has PyYAML, which the script imports.
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, check=False
    )


def test_every_role_is_checked() -> None:
    assert {"app", "common", "haproxy", "release", "worker"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_the_readme_shows_the_argument_spec(role: str) -> None:
    result = role_docs("--check", role)
    assert result.returncode == 0, (
        f"role {role}: roles/{role}/README.md does not show meta/argument_specs.yml as "
        f"scripts/role-docs renders it; run `scripts/role-docs {role}` and commit the result.\n"
        f"{result.stderr}{result.stdout}"
    )


def make_role(tmp_path: Path, spec: str, readme: str) -> Path:
    role = tmp_path / "roles" / "tiny"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "argument_specs.yml").write_text(spec, encoding="utf-8")
    (role / "README.md").write_text(readme, encoding="utf-8")
    return role


TINY_SPEC = """\
argument_specs:
  main:
    short_description: A tiny role.
    options:
      tiny_port:
        type: int
        required: true
        description: >-
          The port; see C(ss -tlnp), I(never) B(0). V(80) is O(tiny_port=80), the
          default of U(https://example.org/port), see L(the docs, https://example.org/docs).
      tiny_password:
        type: str
        no_log: true
        description:
          - A secret, for /srv/<name>.
          - Unset | empty.
      tiny_groups:
        type: list
        elements: str
        default: [app, "two words", "7.0"]
        description: Groups.
      tiny_mode:
        type: str
        choices: [fast, safe]
        default: "{{ tiny_default | default('safe') }}"
        description: The mode.
"""

TINY_TABLE = "\n".join(
    [
        "| variable | type | default | description |",
        "| --- | --- | --- | --- |",
        "| `tiny_port` | int | **required** | The port; see `ss -tlnp`, *never* **0**. `80` is "
        "`tiny_port=80`, the default of <https://example.org/port>, see "
        "[the docs](https://example.org/docs). |",
        # no_log is SECRET, no default is unset, '<' escaped, '|' escaped: the cell stays one cell.
        "| `tiny_password` | str | *unset* | **SECRET.** A secret, for /srv/\\<name>. "
        "Unset \\| empty. |",
        # A string YAML would read as a number is quoted, like one with a space.
        '| `tiny_groups` | list of str | `[app, "two words", "7.0"]` | Groups. |',
        "| `tiny_mode` | str | `\"{{ tiny_default \\| default('safe') }}\"` | The mode. "
        "Choices: `fast`, `safe`. |",
    ]
)


def test_the_table_is_rendered_from_the_spec(tmp_path: Path) -> None:
    readme = f"# tiny\n\nProse before.\n\n{BEGIN}\nthe old hand-written table\n{END}\n\nAfter.\n"
    role = make_role(tmp_path, TINY_SPEC, readme)

    result = role_docs("--roles-dir", tmp_path / "roles", "tiny")

    assert (result.returncode, result.stderr) == (0, "")
    # One entry point: no title, the table alone; the prose around the block is kept as it was.
    assert (role / "README.md").read_text(encoding="utf-8") == (
        f"# tiny\n\nProse before.\n\n{BEGIN}\n\n{TINY_TABLE}\n\n{END}\n\nAfter.\n"
    )
    # Rendering again changes nothing, and the check agrees.
    assert role_docs("--roles-dir", tmp_path / "roles", "--check").returncode == 0


def test_several_entry_points_are_titled_main_first(tmp_path: Path) -> None:
    spec = """\
argument_specs:
  activate:
    short_description: Go live.
    options:
      tiny_id: {type: str, required: true, description: The release.}
  nothing:
    short_description: No options, no table.
  main:
    short_description: The role's C(main) work.
    options:
      tiny_port: {type: int, default: 80, description: The port.}
"""
    role = make_role(tmp_path, spec, f"{BEGIN}\n{END}\n")

    assert role_docs("--roles-dir", tmp_path / "roles").returncode == 0

    assert (role / "README.md").read_text(encoding="utf-8") == (
        f"{BEGIN}\n\n"
        "**Entry point `main`**: The role's `main` work.\n\n"
        "| variable | type | default | description |\n| --- | --- | --- | --- |\n"
        "| `tiny_port` | int | `80` | The port. |\n\n"
        "**Entry point `activate`**: Go live.\n\n"
        "| variable | type | default | description |\n| --- | --- | --- | --- |\n"
        "| `tiny_id` | str | **required** | The release. |\n\n"
        f"{END}\n"
    )


def test_the_check_names_a_stale_readme_and_changes_nothing(tmp_path: Path) -> None:
    role = make_role(tmp_path, TINY_SPEC, f"{BEGIN}\n{END}\n")
    assert role_docs("--roles-dir", tmp_path / "roles").returncode == 0
    spec_path = role / "meta" / "argument_specs.yml"
    spec_path.write_text(TINY_SPEC.replace("description: Groups.", "description: Who."))
    before = (role / "README.md").read_text(encoding="utf-8")

    result = role_docs("--roles-dir", tmp_path / "roles", "--check")

    assert result.returncode == 1
    assert "roles/tiny/README.md: stale" in result.stderr
    assert '-| `tiny_groups` | list of str | `[app, "two words", "7.0"]` | Groups. |' in (
        result.stdout
    )
    assert '+| `tiny_groups` | list of str | `[app, "two words", "7.0"]` | Who. |' in (
        result.stdout
    )
    assert (role / "README.md").read_text(encoding="utf-8") == before


def test_a_readme_without_the_markers_is_named(tmp_path: Path) -> None:
    role = make_role(tmp_path, TINY_SPEC, "# tiny\n\n| variable | default | meaning |\n")

    for args in (["--check"], []):
        result = role_docs("--roles-dir", tmp_path / "roles", *args)
        assert result.returncode == 1
        assert "roles/tiny/README.md: no generated block" in result.stderr
    assert (role / "README.md").read_text(encoding="utf-8") == (
        "# tiny\n\n| variable | default | meaning |\n"
    )


def test_an_unknown_role_is_refused() -> None:
    result = role_docs("--check", "no-such-role")
    assert result.returncode == 2
    assert "no-such-role" in result.stderr


def _descriptions(node: object) -> list[str]:
    """Every description string under NODE (an argument spec, nested options included)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("description", "short_description"):
                found.extend([value] if isinstance(value, str) else [str(v) for v in value])
            else:
                found.extend(_descriptions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_descriptions(item))
    return found


@pytest.mark.parametrize("role", ROLES)
def test_no_description_holds_a_template(role: str) -> None:
    # ansible.builtin.validate_argument_spec templates the whole spec, descriptions included: a
    # "{{ vault_x }}" written there as an example fails every run of the role with "'vault_x' is
    # undefined" (it did, 2026-12-03). Name the variable plainly: C(vault_x).
    spec = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    templated = [text for text in _descriptions(spec) if "{{" in text or "{%" in text]
    assert templated == [], f"roles/{role}/meta/argument_specs.yml: {templated}"
