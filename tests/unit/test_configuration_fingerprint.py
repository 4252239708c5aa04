"""A node is configured again only when what its configuration is made of changed: the
configuration code (rollout.configuration_code_digest), the inventory's part (the play's
rollout_configuration) and the release's name and contract (module_utils/release.py's
configuration(), which the stage and the survey share)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ansible_collections.deploykit.fleet.plugins.module_utils import release
from deploykit import rollout

REPO = Path(__file__).resolve().parents[2]
SHOP = {"name": "shop", "contract": {"settings": ["SECRET_KEY"], "worker": "shop.tasks:app"}}


def _recorded(root: Path, fingerprint: str) -> None:
    (root / "shared").mkdir(parents=True, exist_ok=True)
    (root / "shared" / release.CONFIGURED).write_text(fingerprint + "\n")


def test_a_node_never_configured_is_not_configured(tmp_path: Path) -> None:
    answer = release.configuration(str(tmp_path), "inventory-part", SHOP)
    assert answer["configured"] is False
    assert len(answer["configuration"]) == 64


def test_the_recorded_fingerprint_of_the_same_inputs_is_configured(tmp_path: Path) -> None:
    _recorded(
        tmp_path, release.configuration(str(tmp_path), "inventory-part", SHOP)["configuration"]
    )
    assert release.configuration(str(tmp_path), "inventory-part", SHOP)["configured"] is True


def test_another_inventory_or_contract_or_application_is_not_configured(tmp_path: Path) -> None:
    _recorded(
        tmp_path, release.configuration(str(tmp_path), "inventory-part", SHOP)["configuration"]
    )
    new_setting = {**SHOP, "contract": {**SHOP["contract"], "settings": ["SECRET_KEY", "NEW"]}}
    for given, manifest in (
        ("another-inventory-part", SHOP),
        ("inventory-part", new_setting),
        ("inventory-part", {**SHOP, "name": "notes"}),
    ):
        assert release.configuration(str(tmp_path), given, manifest)["configured"] is False


def test_without_a_fingerprint_every_node_is_configured(tmp_path: Path) -> None:
    _recorded(tmp_path, "")
    assert release.configuration(str(tmp_path), "", SHOP) == {
        "configuration": "",
        "configured": False,
    }


def test_the_code_digest_follows_every_file_of_the_configuration_code(tmp_path: Path) -> None:
    for top in rollout.CONFIGURATION_CODE:
        shutil.copytree(REPO / top, tmp_path / top, symlinks=False)
    before = rollout.configuration_code_digest(tmp_path)
    assert before == rollout.configuration_code_digest(tmp_path)
    template = tmp_path / "roles" / "app" / "templates" / "web.service.j2"
    template.write_text(template.read_text() + "# a change\n")
    changed = rollout.configuration_code_digest(tmp_path)
    assert changed != before
    # The release helper is the collection's module_utils file, through a link: its content counts.
    helper = tmp_path / "roles" / "release" / "files" / "deploykit-release"
    helper.write_text(helper.read_text() + "# a change\n")
    assert rollout.configuration_code_digest(tmp_path) != changed


def test_the_code_digest_covers_the_roles_the_configuration_includes() -> None:
    configure = (REPO / "playbooks" / "rollout" / "tasks" / "configure.yml").read_text()
    included = {line.split("name:")[1].strip() for line in configure.splitlines()
                if line.strip().startswith("name:") and "include_role" not in line
                and not line.strip().startswith("- name:")}  # fmt: skip
    assert included, "configure.yml includes no role"
    assert {f"roles/{name}" for name in included} <= set(rollout.CONFIGURATION_CODE)
