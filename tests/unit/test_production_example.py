"""The documented production inventory stays true to the roles: `deploykit check` accepts it."""

from __future__ import annotations

import yaml

from deploykit.inventory import validate_inventory
from deploykit.project import project_root

ROOT = project_root()
EXAMPLE = ROOT / "inventories" / "production"


def test_the_production_example_passes_check() -> None:
    problems = validate_inventory(EXAMPLE / "hosts.yml", roles_dir=ROOT / "roles")
    assert [str(p) for p in problems] == []


def test_every_required_secret_of_every_role_is_shown_in_the_example() -> None:
    example = (EXAMPLE / "group_vars" / "all.yml").read_text()
    for specs in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        role = specs.parent.parent.name
        options = yaml.safe_load(specs.read_text())["argument_specs"]["main"]["options"]
        for name, option in options.items():
            if option.get("required") and option.get("no_log"):
                assert f"{name}: " in example, f"role {role}: {name} is not in the example"
