"""deploykit.inventory: every broken inventory gives the exact line a user sees; nothing else does.

The roles' argument specs are fakes written to tmp_path (the real roles/ is not a fixture), and
every inventory is written to tmp_path too. Nothing is contacted.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploykit import inventory
from deploykit.errors import BadInput
from deploykit.inventory import (
    REQUIRED_GROUPS,
    Problem,
    VariableSpec,
    load_known_variables,
    validate_inventory,
)

REPO = Path(__file__).resolve().parents[2]

# --- fixtures: fake roles and a valid stack -------------------------------------------------

FAKE_SPECS = {
    "haproxy": {
        "main": {
            "options": {
                "haproxy_stats_port": {"type": "int", "default": 8404},
                "haproxy_stats_password": {"type": "str", "required": True, "no_log": True},
                "haproxy_balance": {"type": "str", "choices": ["roundrobin", "leastconn"]},
            }
        }
    },
    "redis": {
        "main": {
            "options": {
                "redis_port": {"type": "int", "default": 6379},
                "redis_appendonly": {"type": "bool", "default": True},
                "redis_save": {"type": "list", "elements": "int", "default": [900, 300]},
            }
        }
    },
    "app": {
        "main": {"options": {"app_workers": {"type": "int", "default": 4}}},
        # A second entry point: its options are known variables too.
        "deploy": {"options": {"app_batch_size": {"type": "int"}, "app_env": {"type": "dict"}}},
    },
}


def write_roles(root: Path, specs: dict[str, Any] = FAKE_SPECS) -> Path:
    roles = root / "roles"
    for role, entry_points in specs.items():
        meta = roles / role / "meta"
        meta.mkdir(parents=True)
        (meta / "argument_specs.yml").write_text(
            yaml.safe_dump({"argument_specs": entry_points}), encoding="utf-8"
        )
    return roles


@pytest.fixture
def roles_dir(tmp_path: Path) -> Path:
    return write_roles(tmp_path / "project")


# One host per group, addressed by private IPs: the smallest inventory that passes.
VALID_HOSTS: dict[str, dict[str, dict[str, Any]]] = {
    "lb": {"lb1": {"ansible_host": "10.0.0.10"}},
    "app": {
        "app1": {"ansible_host": "10.0.0.21", "deploykit_private_address": "10.0.0.21"},
        "app2": {"ansible_host": "10.0.0.22"},
    },
    "worker": {"worker1": {"ansible_host": "worker1.example.com", "ansible_port": 2222}},
    "cache": {"cache1": {"ansible_host": "10.0.0.41"}},
    "docstore": {"db1": {"ansible_host": "10.0.0.51"}},
    "queue": {"queue1": {"ansible_host": "10.0.0.61"}},
}


def stack(
    hosts: dict[str, dict[str, dict[str, Any]]] | None = None,
    *,
    omit: str | None = None,
    group_vars: dict[str, dict[str, Any]] | None = None,
    all_vars: dict[str, Any] | None = None,
) -> str:
    """A YAML inventory of the valid stack, with ``hosts`` groups replaced or added and the
    ``omit`` group left out."""
    groups = copy.deepcopy(VALID_HOSTS)
    groups.update(hosts or {})
    groups.pop(omit or "", None)
    children: dict[str, Any] = {}
    for group, members in groups.items():
        children[group] = {"hosts": {h: (v or None) for h, v in members.items()}}
        if group_vars and group in group_vars:
            children[group]["vars"] = group_vars[group]
    document: dict[str, Any] = {"all": {"children": children}}
    if all_vars:
        document["all"]["vars"] = all_vars
    return yaml.safe_dump(document, sort_keys=False)


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


VALID_INI = """\
[lb]
lb1 ansible_host=10.0.0.10

[app]
app1 ansible_host=10.0.0.21
app2 ansible_host=10.0.0.22

[worker]
worker1 ansible_host=worker1.example.com ansible_port=2222

[cache]
cache1 ansible_host=10.0.0.41

[docstore]
db1 ansible_host=10.0.0.51

[queue]
queue1 ansible_host=10.0.0.61

[cache:vars]
redis_port=6380
redis_appendonly=yes
"""

ENCRYPTED_FILE = "$ANSIBLE_VAULT;1.1;AES256\n6162636465666768\n"
INLINE_VAULT = "!vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162636465666768\n"


# --- the table: broken inventories and the exact lines they give -----------------------------

# Each case: files to write (relative to the inventory's directory; "hosts.yml"/"hosts.ini" is the
# inventory), which file is the inventory, and the complete list of lines `deploykit check`
# prints. "{dir}" stands for the inventory's directory, "{inv}" for the inventory file.
CASES: list[Any] = [
    pytest.param(
        {"hosts.yml": "all:\n  children:\n    lb:\n      hosts:\n     lb1:\n"},
        "hosts.yml",
        [
            "inventory '{inv}': cannot be parsed as an inventory (Colons in unquoted values "
            "must be followed by a non-space character at line 5, column 6); fix the YAML syntax"
        ],
        id="yaml-syntax-error",
    ),
    pytest.param(
        {"hosts.ini": VALID_INI.replace("[queue]", "[queue")},
        "hosts.ini",
        [
            "inventory '{inv}': cannot be parsed as an inventory (not enough values to unpack "
            "(expected 3, got 2)); fix the INI syntax"
        ],
        id="ini-syntax-error",
    ),
    pytest.param(
        {"hosts.yml": stack(omit="queue")},
        "hosts.yml",
        [
            "group 'queue': missing or empty; add at least one host under it "
            "(RabbitMQ, the job queue)"
        ],
        id="missing-group",
    ),
    pytest.param(
        {"hosts.yml": stack({"lb": {}})},
        "hosts.yml",
        ["group 'lb': missing or empty; add at least one host under it (the HAProxy balancer)"],
        id="empty-group",
    ),
    pytest.param(
        {"hosts.yml": stack({"appp": {"app3": {"ansible_host": "10.0.0.23"}}})},
        "hosts.yml",
        [
            "group 'appp': not a deploykit group (did you mean 'app'?); rename it, or move its "
            "hosts into lb, app, worker, cache, docstore, queue and remove it",
            "host 'app3': is in no deploykit group, so no role would run on it; add it to one of "
            "lb, app, worker, cache, docstore, queue, or remove it",
        ],
        id="unknown-group-did-you-mean",
    ),
    pytest.param(
        {
            # stack() ends inside all.children, so this adds a group.
            "hosts.yml": stack(omit="queue") + "    queue:\n      hots:\n        queue1:\n",
        },
        "hosts.yml",
        [
            "group 'queue': unexpected key 'hots' (did you mean 'hosts'?); a group holds only "
            "'hosts', 'children' and 'vars'",
            "group 'queue': missing or empty; add at least one host under it "
            "(RabbitMQ, the job queue)",
        ],
        id="misspelt-hosts-key",
    ),
    pytest.param(
        {"hosts.yml": stack({"cache": {"cache1": {"ansible_host": "10.0.0.300"}}})},
        "hosts.yml",
        [
            "host 'cache1': ansible_host '10.0.0.300' is not a valid IPv4 address; set it to the "
            "host's IP address or DNS name"
        ],
        id="bad-ipv4",
    ),
    pytest.param(
        {"hosts.yml": stack({"queue": {"queue_1": {}}})},
        "hosts.yml",
        [
            "host 'queue_1': has no ansible_host and its name 'queue_1' is not a valid hostname "
            "(RFC 1123: letters, digits, '-' and '.'); set ansible_host to its IP address or "
            "DNS name"
        ],
        id="name-is-not-a-hostname",
    ),
    pytest.param(
        {
            "hosts.yml": stack(
                {
                    "app": {
                        "app1": {"ansible_host": "10.0.0.21"},
                        "app2": {"ansible_host": "10.0.0.21"},
                    }
                }
            )
        },
        "hosts.yml",
        [
            "host 'app2': has the same address as host 'app1' (10.0.0.21, port 22) in group "
            "'app'; give each host its own ansible_host"
        ],
        id="two-clones-one-address",
    ),
    pytest.param(
        {"hosts.yml": stack({"queue": {"queue1": {"ansible_host": "q1", "ansible_port": 70000}}})},
        "hosts.yml",
        [
            "variable 'ansible_port' (host 'queue1'): expected a port number from 1 to 65535, "
            "got 70000; set a port number such as 22"
        ],
        id="ssh-port-out-of-range",
    ),
    pytest.param(
        {
            "hosts.yml": stack(
                {
                    "cache": {
                        "cache1": {
                            "ansible_host": "10.0.0.41",
                            "deploykit_private_address": "cache",
                        }
                    }
                }
            )
        },
        "hosts.yml",
        [
            "variable 'deploykit_private_address' (host 'cache1'): expected an IPv4 or IPv6 "
            "address, got 'cache'; set the host's address on the private network, such as "
            "10.0.0.11"
        ],
        id="private-address-not-an-ip",
    ),
    pytest.param(
        {"hosts.yml": stack(group_vars={"lb": {"haproxy_stats_port": "eighty"}})},
        "hosts.yml",
        [
            "variable 'haproxy_stats_port' (group 'lb'): expected an integer, got 'eighty'; "
            "set a port number such as 8404"
        ],
        id="int-option-given-a-word",
    ),
    pytest.param(
        {"hosts.yml": stack(group_vars={"cache": {"redis_prot": 6380}})},
        "hosts.yml",
        [
            "variable 'redis_prot' (group 'cache'): unknown variable (did you mean "
            "'redis_port'?); no role declares it in meta/argument_specs.yml: fix the name or "
            "remove it (a value kept in the vault is named vault_*)"
        ],
        id="unknown-variable-did-you-mean",
    ),
    pytest.param(
        {"hosts.yml": stack(all_vars={"deploykit_docstore_engine": "mongo"})},
        "hosts.yml",
        [
            "variable 'deploykit_docstore_engine' (group 'all'): expected one of 'mongodb', "
            "'postgresql', got 'mongo'; did you mean 'mongodb'?"
        ],
        id="choice-did-you-mean",
    ),
    pytest.param(
        {"hosts.yml": stack(group_vars={"cache": {"redis_save": [900, "often"]}})},
        "hosts.yml",
        [
            "variable 'redis_save' (group 'cache'): expected a list of integers, item 2 is "
            "'often'; fix that item"
        ],
        id="list-element-type",
    ),
    pytest.param(
        {"hosts.ini": VALID_INI.replace("redis_appendonly=yes", "redis_appendonly=maybe")},
        "hosts.ini",
        [
            "variable 'redis_appendonly' (group 'cache'): expected a boolean, got 'maybe'; "
            "set true or false"
        ],
        id="ini-bool",
    ),
    pytest.param(
        {
            "hosts.ini": VALID_INI.replace("[lb]\nlb1", "[lb]\nlb1 haproxy_stats_port=0"),
        },
        "hosts.ini",
        [
            "variable 'haproxy_stats_port' (host 'lb1'): expected a port number from 1 to "
            "65535, got 0; set a port number such as 8404"
        ],
        id="ini-host-var-port",
    ),
    pytest.param(
        {
            "hosts.yml": stack(),
            "group_vars/app.yml": "app_workers: many\n",
            "group_vars/all.yml": "ansible_become: perhaps\n",
        },
        "hosts.yml",
        [
            "variable 'ansible_become' (group 'all', group_vars/all.yml): expected a boolean, "
            "got 'perhaps'; set true or false",
            "variable 'app_workers' (group 'app', group_vars/app.yml): expected an integer, "
            "got 'many'; set a whole number such as 4",
        ],
        id="group-vars-types",
    ),
    pytest.param(
        {"hosts.yml": stack(), "host_vars/app1/main.yml": "app_env: [production]\n"},
        "hosts.yml",
        [
            "variable 'app_env' (host 'app1', host_vars/app1/main.yml): expected a mapping, got "
            "a list; write it as 'key: value' lines"
        ],
        id="host-vars-dir-dict",
    ),
    pytest.param(
        {"hosts.yml": stack(), "group_vars/webservers.yml": "app_workers: 8\n"},
        "hosts.yml",
        [
            "vars file '{dir}/group_vars/webservers.yml': there is no group 'webservers' in "
            "the inventory, so Ansible ignores it; rename it after a group"
        ],
        id="group-vars-for-no-group",
    ),
    pytest.param(
        {
            "hosts.yml": stack(),
            "group_vars/all/main.yml": "app_workers: 8\n",
            "group_vars/all.yml": "app_workers: 2\n",
        },
        "hosts.yml",
        [
            "vars file '{dir}/group_vars/all.yml': ignored by Ansible, which reads all/ "
            "instead; merge the two"
        ],
        id="group-vars-shadowed",
    ),
    pytest.param(
        {"hosts.yml": stack(), "group_vars/cache.yml": "redis_port: [6379\n"},
        "hosts.yml",
        [
            "vars file '{dir}/group_vars/cache.yml': cannot be read (While parsing a flow "
            "sequence did not find expected ',' or ']' at line 2, column 1); fix it so that "
            "it is a YAML mapping of variable names to values"
        ],
        id="group-vars-syntax-error",
    ),
    pytest.param(
        {"hosts.yml": stack(), "group_vars/cache.yml": "redis_port: 6379\nredis_port: 6380\n"},
        "hosts.yml",
        [
            "vars file '{dir}/group_vars/cache.yml': 'redis_port' appears twice in one mapping "
            "and Ansible keeps only the last; merge the two entries or remove one"
        ],
        id="group-vars-duplicate-key",
    ),
]


@pytest.mark.parametrize(("files", "inventory_name", "expected"), CASES)
def test_broken_inventory_gives_exact_lines(
    tmp_path: Path,
    roles_dir: Path,
    files: dict[str, str],
    inventory_name: str,
    expected: list[str],
) -> None:
    site = tmp_path / "site"
    write_files(site, files)
    path = site / inventory_name

    problems = validate_inventory(path, roles_dir)

    lines = [line.format(dir=site, inv=path) for line in expected]
    assert [str(p) for p in problems] == lines


# --- valid inventories ------------------------------------------------------------------------


def test_valid_yaml_inventory_has_no_problems(tmp_path: Path, roles_dir: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(stack(), encoding="utf-8")
    assert validate_inventory(path, roles_dir) == []


def test_valid_ini_inventory_has_no_problems(tmp_path: Path, roles_dir: Path) -> None:
    path = tmp_path / "hosts.ini"
    path.write_text(VALID_INI, encoding="utf-8")
    assert validate_inventory(path, roles_dir) == []


def test_vault_and_templates_are_neither_decrypted_nor_type_checked(
    tmp_path: Path, roles_dir: Path
) -> None:
    """A check runs without the vault password: an encrypted file is skipped, an encrypted value
    and a template are not type-checked, and a vault_* name is always known."""
    write_files(
        tmp_path,
        {
            "hosts.yml": stack(group_vars={"lb": {"haproxy_stats_port": "{{ vault_stats_port }}"}}),
            "group_vars/all/main.yml": "haproxy_stats_password: '{{ vault_stats_password }}'\n",
            "group_vars/all/vault.yml": ENCRYPTED_FILE,
            "group_vars/cache.yml": (
                f"redis_port: {INLINE_VAULT}vault_redis_password: {INLINE_VAULT}"
            ),
        },
    )
    assert validate_inventory(tmp_path / "hosts.yml", roles_dir) == []


def test_inventory_directory_with_group_vars(tmp_path: Path, roles_dir: Path) -> None:
    """-i may name the directory: Ansible reads every inventory file in it, and its group_vars."""
    site = tmp_path / "site"
    write_files(
        site,
        {"hosts.yml": stack(), "group_vars/app.yml": "app_workers: eight\n", "README.md": "x"},
    )
    assert [str(p) for p in validate_inventory(site, roles_dir)] == [
        "variable 'app_workers' (group 'app', group_vars/app.yml): expected an integer, got "
        "'eight'; set a whole number such as 4"
    ]


def test_several_groups_on_one_host_is_fine(tmp_path: Path, roles_dir: Path) -> None:
    """A small site: the same host listed under several groups is not a duplicate address."""
    one = {"ansible_host": "10.0.0.5"}
    two = {"ansible_host": "10.0.0.6"}
    hosts = {
        "lb": {"edge": one},
        "app": {"edge": one},
        "worker": {"back": two},
        "cache": {"back": two},
        "docstore": {"back": two},
        "queue": {"back": two},
    }
    path = tmp_path / "hosts.yml"
    path.write_text(stack(hosts), encoding="utf-8")
    assert validate_inventory(path, roles_dir) == []


def test_local_and_docker_connections_skip_address_checks(tmp_path: Path, roles_dir: Path) -> None:
    """Those connections do not reach an address, so a container name is not a hostname mistake."""
    path = tmp_path / "hosts.yml"
    path.write_text(
        stack({"queue": {"queue_1": {"ansible_connection": "community.docker.docker"}}}),
        encoding="utf-8",
    )
    assert validate_inventory(path, roles_dir) == []


# --- order, files, roles --------------------------------------------------------------------


def test_problems_come_in_a_stable_order_without_duplicates(
    tmp_path: Path, roles_dir: Path
) -> None:
    """File, then groups, then hosts, then variables, each once; the same on every run."""
    hosts = {
        "app": {"app1": {"ansible_host": "10.0.0.21", "app_workers": "x"}},
        "queue": {"queue1": {"ansible_host": "bad host"}},
    }
    write_files(
        tmp_path,
        {
            "hosts.yml": stack(hosts, omit="worker", group_vars={"cache": {"redis_prot": 1}})
            + "    web:\n      hosts:\n        app1:\n",
            "group_vars/nope.yml": "x: 1\n",
        },
    )
    path = tmp_path / "hosts.yml"
    first = [str(p) for p in validate_inventory(path, roles_dir)]
    assert first == [str(p) for p in validate_inventory(path, roles_dir)]
    assert first == [
        f"vars file '{tmp_path}/group_vars/nope.yml': there is no group 'nope' in the "
        "inventory, so Ansible ignores it; rename it after a group",
        "group 'worker': missing or empty; add at least one host under it (the queue "
        "consumers, running the same release as app)",
        "group 'web': not a deploykit group; rename it, or move its hosts into lb, app, worker, "
        "cache, docstore, queue and remove it",
        "host 'queue1': ansible_host 'bad host' is neither an IP address nor a valid hostname "
        "(RFC 1123: letters, digits, '-' and '.'); set it to the host's IP address or DNS name",
        "variable 'redis_prot' (group 'cache'): unknown variable (did you mean 'redis_port'?); "
        "no role declares it in meta/argument_specs.yml: fix the name or remove it (a value "
        "kept in the vault is named vault_*)",
        "variable 'app_workers' (host 'app1'): expected an integer, got 'x'; set a whole "
        "number such as 4",
    ]


def test_a_mistake_ansible_reports_twice_is_one_problem(tmp_path: Path, roles_dir: Path) -> None:
    """Ansible warns about a duplicated host once per pass over the file; the user sees it once."""
    text = stack(omit="app") + (
        "    app:\n"
        "      hosts:\n"
        "        app1:\n"
        "          ansible_host: 10.0.0.21\n"
        "        app1:\n"
        "          ansible_host: 10.0.0.22\n"
    )
    path = tmp_path / "hosts.yml"
    path.write_text(text, encoding="utf-8")
    assert [str(p) for p in validate_inventory(path, roles_dir)] == [
        f"inventory '{path}': 'app1' appears twice in one mapping and Ansible keeps only the "
        "last; merge the two entries or remove one"
    ]


def test_unparsable_inventory_made_fatal_by_ansible_cfg(
    tmp_path: Path, roles_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With [inventory] any_unparsed_is_failed, Ansible raises instead of warning: same line."""
    import ansible.constants  # noqa: PLC0415

    monkeypatch.setattr(ansible.constants, "INVENTORY_ANY_UNPARSED_IS_FAILED", True)
    site = tmp_path / "site"
    write_files(site, {"hosts.yml": stack(), "more.yml": "all: [\n"})
    assert [str(p) for p in validate_inventory(site, roles_dir)] == [
        f"inventory '{site}/more.yml': cannot be parsed as an inventory (While parsing a flow "
        "node did not find expected node content at line 2, column 1); fix the YAML syntax"
    ]


def test_missing_inventory_file(tmp_path: Path, roles_dir: Path) -> None:
    path = tmp_path / "nope.yml"
    assert [str(p) for p in validate_inventory(path, roles_dir)] == [
        f"inventory '{path}': does not exist; pass an inventory with -i, or run "
        "'deploykit lab up' to write the lab's"
    ]


def test_ansible_prints_nothing_during_a_check(
    tmp_path: Path, roles_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Ansible warns about unparsable inventories and duplicate keys; a check must only return
    problems, never let those warnings reach the terminal."""
    write_files(tmp_path, {"bad.yml": "all: [\n", "dup.yml": stack() + stack()})
    assert validate_inventory(tmp_path / "bad.yml", roles_dir)
    assert validate_inventory(tmp_path / "dup.yml", roles_dir)
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_without_argument_specs_names_cannot_be_checked(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(stack(group_vars={"cache": {"anything": 1}}), encoding="utf-8")
    roles = tmp_path / "roles"
    assert [str(p) for p in validate_inventory(path, roles)] == [
        f"roles '{roles}': no role argument specs found (roles/*/meta/argument_specs.yml), so "
        "variable names cannot be checked; run deploykit from the project directory or set "
        "DEPLOYKIT_PROJECT"
    ]


def test_a_broken_argument_spec_is_a_problem(tmp_path: Path, roles_dir: Path) -> None:
    (roles_dir / "queue" / "meta").mkdir(parents=True)
    (roles_dir / "queue" / "meta" / "argument_specs.yml").write_text("argument_specs: [\n")
    path = tmp_path / "hosts.yml"
    path.write_text(stack(), encoding="utf-8")
    problems = [str(p) for p in validate_inventory(path, roles_dir)]
    assert problems == [
        "role 'queue': cannot read meta/argument_specs.yml (expected the node content, but "
        "found '<stream end>' at line 2, column 1); fix its YAML syntax"
    ] or problems == [
        # libyaml (PyYAML's C extension, used when it is there) words the same error so.
        "role 'queue': cannot read meta/argument_specs.yml (did not find expected node "
        "content at line 2, column 1); fix its YAML syntax"
    ]
    with pytest.raises(BadInput, match="role 'queue'"):
        load_known_variables(roles_dir)


def test_load_known_variables(roles_dir: Path) -> None:
    known = load_known_variables(roles_dir)
    assert known["haproxy_stats_port"] == VariableSpec(
        "haproxy_stats_port", type="int", default=8404, sources=("role 'haproxy'",)
    )
    assert known["haproxy_balance"].choices == ("roundrobin", "leastconn")
    assert known["redis_save"].elements == "int"
    assert known["app_batch_size"].type == "int"  # from the role's second entry point
    assert known["deploykit_docstore_engine"].choices == ("mongodb", "postgresql")
    assert known["deploykit_private_address"].type == "ip"
    assert known["ansible_port"].type == "int"


def test_two_roles_declaring_one_variable_accept_what_either_accepts(tmp_path: Path) -> None:
    roles = write_roles(
        tmp_path,
        {
            "a": {"main": {"options": {"shared_mode": {"type": "str", "choices": ["x", "y"]}}}},
            "b": {"main": {"options": {"shared_mode": {"type": "str", "choices": ["z"]}}}},
            "c": {"main": {"options": {"shared_size": {"type": "int"}}}},
            "d": {"main": {"options": {"shared_size": {"type": "str"}}}},
        },
    )
    known = load_known_variables(roles)
    assert known["shared_mode"].choices == ("x", "y", "z")
    assert known["shared_size"].type == "raw"
    assert known["shared_size"].sources == ("role 'c'", "role 'd'")


def test_problem_is_one_line() -> None:
    problem = Problem("host 'app1'", "ansible_host 'x y' is not an address; set it")
    assert str(problem) == "host 'app1': ansible_host 'x y' is not an address; set it"
    assert REQUIRED_GROUPS == ("lb", "app", "worker", "cache", "docstore", "queue")
    assert set(inventory.GROUP_PURPOSES) == set(REQUIRED_GROUPS)


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory the CLI finds through DEPLOYKIT_PROJECT, with the fake roles."""
    root = tmp_path / "project"
    write_roles(root)
    monkeypatch.setenv("DEPLOYKIT_PROJECT", str(root))
    return root


def test_cli_check_exits_2_and_prints_the_problem(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploykit.cli import main  # noqa: PLC0415  (imports lab and runner, written elsewhere)

    path = project / "hosts.yml"
    path.write_text(stack(group_vars={"lb": {"haproxy_stats_port": "eighty"}}), encoding="utf-8")

    assert main(["check", "-i", str(path)]) == 2

    out = capsys.readouterr().out
    expected = (
        "variable 'haproxy_stats_port' (group 'lb'): expected an integer, got 'eighty'; set a "
        "port number such as 8404"
    )
    # Compared with whitespace collapsed: see test_cli_check_prints_one_line_per_problem.
    assert " ".join(out.split()) == expected


def test_cli_check_prints_one_line_per_problem(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploykit.cli import main  # noqa: PLC0415

    monkeypatch.setenv("COLUMNS", "80")
    path = project / "hosts.yml"
    path.write_text(stack(omit="docstore"), encoding="utf-8")

    assert main(["check", "-i", str(path)]) == 2

    assert capsys.readouterr().out.splitlines() == [
        "group 'docstore': missing or empty; add at least one host under it (the document "
        "database, MongoDB or PostgreSQL)"
    ]


def test_cli_check_valid_inventory_exits_0(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploykit.cli import main  # noqa: PLC0415

    path = project / "hosts.yml"
    path.write_text(stack(), encoding="utf-8")

    assert main(["check", "-i", str(path)]) == 0

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "inventory OK" in captured.err


def test_cli_check_json(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json  # noqa: PLC0415

    from deploykit.cli import main  # noqa: PLC0415

    path = project / "hosts.yml"
    path.write_text(stack(omit="lb"), encoding="utf-8")

    assert main(["check", "-i", str(path), "--json"]) == 2

    assert json.loads(capsys.readouterr().out) == {
        "inventory": str(path),
        "problems": [
            "group 'lb': missing or empty; add at least one host under it (the HAProxy balancer)"
        ],
    }
