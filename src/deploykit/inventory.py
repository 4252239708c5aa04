"""Inventory validation: find what is wrong with an inventory before any host is contacted.

``deploykit check`` (and every command that runs a playbook) calls :func:`validate_inventory`. It
returns one :class:`Problem` per mistake; each renders as ONE line that names the group, host or
variable and says what to change, so a user can fix a whole inventory in one pass instead of
discovering mistakes one failed play at a time.

The inventory is read with Ansible's own machinery (``DataLoader``, ``InventoryManager``,
``VariableManager``) so that exactly what ``ansible-playbook`` would see is checked: INI or YAML,
``group_vars/`` and ``host_vars/`` next to the inventory, host ranges, children groups. Two things
Ansible would do are deliberately not done here:

- nothing is decrypted: a check must work without the vault password, so vault-encrypted values and
  files are skipped (their names are still seen when the encryption is per value);
- nothing is templated: ``"{{ vault_redis_password }}"`` is only known when a play runs, so values
  that are templates are not type-checked.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from ansible import constants as ansible_constants
from ansible.errors import AnsibleError
from ansible.inventory.manager import InventoryManager
from ansible.module_utils.common.validation import (
    check_type_bits,
    check_type_bool,
    check_type_bytes,
    check_type_dict,
    check_type_float,
    check_type_int,
    check_type_list,
)
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import is_encrypted_file
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader
from ansible.template import Templar
from ansible.utils.display import Display
from ansible.vars.manager import VariableManager

from deploykit.errors import BadInput, DeploykitError

__all__ = [
    "DEFAULT_SSH_PORT",
    "GROUP_PURPOSES",
    "REQUIRED_GROUPS",
    "SSH_CONNECTIONS",
    "Problem",
    "VariableSpec",
    "load_known_variables",
    "opened",
    "reached_over_ssh",
    "read_layout",
    "ssh_options",
    "validate_inventory",
]

# --- what deploykit expects -----------------------------------------------------------------

REQUIRED_GROUPS: Final = ("lb", "app", "worker", "cache", "docstore", "queue")
"""The inventory groups deploykit builds the stack from; each needs at least one host."""

GROUP_PURPOSES: Final[Mapping[str, str]] = {
    "lb": "the HAProxy balancer",
    "app": "the application clones behind the balancer",
    "worker": "the queue consumers, running the same release as app",
    "cache": "Redis, for sessions and cached objects",
    "docstore": "the document database, MongoDB or PostgreSQL",
    "queue": "RabbitMQ, the job queue",
}

# Ansible creates these two itself; they are never a user's mistake.
_IMPLICIT_GROUPS: Final = ("all", "ungrouped")

# Variables Ansible adds to every host while parsing; they were not set by the user.
_ANSIBLE_ADDED_HOST_VARS: Final = frozenset(
    {
        "inventory_file",
        "inventory_dir",
        "inventory_hostname",
        "inventory_hostname_short",
        "group_names",
    }
)

# Extensions Ansible tries, in this order, for group_vars/<name> and host_vars/<name> ('' is the
# directory form). Only the first that exists is read.
_VARS_FILE_EXTENSIONS: Final = ("", ".yml", ".yaml", ".json")

_MAX_PORT: Final = 65535
#: ssh(1)'s port when nothing sets one.
DEFAULT_SSH_PORT: Final = 22


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an inventory, printed as one line: where it is, what to change."""

    where: str  # e.g. "group 'lb'", "host 'app1'", "variable 'redis_port' (host 'cache1')"
    message: str  # what is wrong AND what to change

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class VariableSpec:
    """What a variable may hold: the subset of an Ansible argument spec option that a check uses.

    ``type`` is an argument-spec type (``str``, ``int``, ``bool``, ``float``, ``list``, ``dict``,
    ``path``, ``raw``, ``bytes``, ``bits``...) or ``ip`` (deploykit's own: an IPv4/IPv6 address).
    ``sources`` names who declares it: ``role 'redis'``, ``deploykit`` or ``ansible``.
    """

    name: str
    type: str = "str"
    choices: tuple[Any, ...] = ()
    elements: str | None = None
    required: bool = False
    default: Any = None
    description: str = ""
    sources: tuple[str, ...] = field(default=())


# deploykit's own variables: read by the CLI and by several roles, so no single role declares them.
_DEPLOYKIT_VARIABLES: Final[Mapping[str, VariableSpec]] = {
    spec.name: spec
    for spec in (
        VariableSpec(
            "deploykit_private_address",
            type="ip",
            description="the host's address on the private network: services bind to it and the "
            "firewall admits peers by it",
            sources=("deploykit",),
        ),
        VariableSpec(
            "deploykit_docstore_engine",
            choices=("mongodb", "postgresql"),
            default="mongodb",
            description="which document database the docstore group runs",
            sources=("deploykit",),
        ),
        VariableSpec(
            "deploykit_app_name",
            description="the application's name: /srv/<name>/ and its systemd units",
            sources=("deploykit",),
        ),
        VariableSpec(
            "deploykit_canary_soak",
            type="float",
            default=0,
            description="seconds a deploy's canary serves live traffic before it is judged against "
            "the old release (0: no soak; deploykit deploy --canary-soak overrides it)",
            sources=("deploykit",),
        ),
        VariableSpec(
            "deploykit_canary_max_error_increase",
            type="float",
            default=2.0,
            description="percentage points of 5xx answers the canary may have above the old "
            "release",
            sources=("deploykit",),
        ),
        VariableSpec(
            "deploykit_canary_max_response_ratio",
            type="float",
            default=3.0,
            description="how many times the old release's response time the canary may take",
            sources=("deploykit",),
        ),
        VariableSpec(
            "deploykit_canary_min_requests",
            type="int",
            default=20,
            description="a canary with fewer requests over the soak is not judged",
            sources=("deploykit",),
        ),
    )
}

# Every ``ansible_*`` name is accepted (there are hundreds, from connection, become and shell
# plugins). These few are listed so that their values are type-checked and so that a misspelling
# such as 'ansbile_host' gets a "did you mean".
_ANSIBLE_VARIABLES: Final[Mapping[str, VariableSpec]] = {
    spec.name: spec
    for spec in (
        VariableSpec("ansible_host", sources=("ansible",)),
        VariableSpec("ansible_port", type="int", default=DEFAULT_SSH_PORT, sources=("ansible",)),
        VariableSpec("ansible_user", sources=("ansible",)),
        VariableSpec("ansible_connection", sources=("ansible",)),
        VariableSpec("ansible_become", type="bool", sources=("ansible",)),
        VariableSpec("ansible_become_user", sources=("ansible",)),
        VariableSpec("ansible_become_method", sources=("ansible",)),
        VariableSpec("ansible_python_interpreter", sources=("ansible",)),
        VariableSpec("ansible_ssh_private_key_file", type="path", sources=("ansible",)),
        VariableSpec("ansible_ssh_common_args", sources=("ansible",)),
        VariableSpec("ansible_group_priority", type="int", sources=("ansible",)),
    )
}

_KNOWN_PREFIXES: Final = ("ansible_", "vault_")


# --- public API -----------------------------------------------------------------------------


def load_known_variables(roles_dir: Path) -> dict[str, VariableSpec]:
    """Every variable an inventory may set, by name: deploykit's own, the common ``ansible_*``
    ones, and every option of every entry point in ``roles_dir/*/meta/argument_specs.yml``.

    (Any ``ansible_*`` or ``vault_*`` name is accepted as well; those are rules, not entries.)
    Raises :class:`deploykit.errors.BadInput` if an argument spec cannot be read.
    """
    known, problems, _ = _read_known_variables(roles_dir)
    if problems:
        raise BadInput(str(problems[0]), hint="fix the role's meta/argument_specs.yml")
    return known


def validate_inventory(path: Path, roles_dir: Path) -> list[Problem]:
    """Everything wrong with the inventory at ``path`` (a file or a directory), checked against the
    roles' argument specs in ``roles_dir``. An empty list means it is fit to run.

    Problems come in a stable order: the inventory and its files, then groups, hosts, variables.
    Nothing is contacted, decrypted or templated, and Ansible's warnings are captured (and turned
    into problems where they mean the inventory is not what the user wrote) instead of printed.
    """
    if not path.exists():
        return [
            Problem(
                f"inventory '{path}'",
                "does not exist; pass an inventory with -i, or run 'deploykit lab up' to write "
                "the lab's",
            )
        ]

    known, spec_problems, have_specs = _read_known_variables(roles_dir)
    report = _Report()
    report.files.extend(spec_problems)
    if not have_specs:
        report.files.append(
            Problem(
                f"roles '{roles_dir}'",
                "no role argument specs found (roles/*/meta/argument_specs.yml), so variable "
                "names cannot be checked; run deploykit from the project directory or set "
                "DEPLOYKIT_PROJECT",
            )
        )

    with _captured_ansible_warnings() as captured:
        loader = _CheckLoader()
        inventory, fatal = _parse_inventory(path, loader)
    report.absorb_ansible_warnings(captured, path, fatal)
    if inventory is None:
        # Whatever Ansible salvaged from a file it could not parse is not what the user wrote;
        # reporting missing groups on top would only bury the line that matters.
        return report.ordered()

    loader.lenient = True
    with _captured_ansible_warnings():
        _InventoryCheck(path, inventory, loader, known, check_names=have_specs).run(report)
    return report.ordered()


# --- reading the roles' argument specs ------------------------------------------------------


# The roles' argument specs are read on every command that takes an inventory: with libyaml's
# parser (PyYAML's C extension, in its wheels) in a tenth of the pure-Python parser's time.
_SPEC_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_known_variables(roles_dir: Path) -> tuple[dict[str, VariableSpec], list[Problem], bool]:
    """(known variables, problems reading the specs, whether any argument spec was found)."""
    known: dict[str, VariableSpec] = {**_DEPLOYKIT_VARIABLES, **_ANSIBLE_VARIABLES}
    problems: list[Problem] = []
    found = False
    role_dirs = sorted(p for p in roles_dir.iterdir() if p.is_dir()) if roles_dir.is_dir() else []
    for role_dir in role_dirs:
        spec_file, entry_points = _role_entry_points(role_dir, problems)
        if spec_file is None:
            continue
        found = True
        for entry_name, entry in entry_points.items():
            options = entry.get("options") if isinstance(entry, Mapping) else None
            if options is None:
                continue
            if not isinstance(options, Mapping):
                problems.append(
                    Problem(
                        f"role '{role_dir.name}'",
                        f"{spec_file.relative_to(role_dir)}: the options of entry point "
                        f"'{entry_name}' are not a mapping; list them as 'name: {{type: ...}}'",
                    )
                )
                continue
            for name, option in options.items():
                spec = _spec_from_option(str(name), option, f"role '{role_dir.name}'")
                known[spec.name] = _merge_specs(known.get(spec.name), spec)
    return known, problems, found


def _role_entry_points(
    role_dir: Path, problems: list[Problem]
) -> tuple[Path | None, Mapping[Any, Any]]:
    """The role's ``argument_specs`` mapping, from meta/argument_specs.yml or, as Ansible also
    allows, from meta/main.yml."""
    meta = role_dir / "meta"
    candidates = [meta / "argument_specs.yml", meta / "argument_specs.yaml", meta / "main.yml"]
    for spec_file in candidates:
        if not spec_file.is_file():
            continue
        try:
            text = spec_file.read_text(encoding="utf-8")
            data = yaml.load(text, Loader=_SPEC_LOADER)  # noqa: S506 (a safe loader, C or Python)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            problems.append(
                Problem(
                    f"role '{role_dir.name}'",
                    f"cannot read {spec_file.relative_to(role_dir)} ({_short_reason(error)}); "
                    "fix its YAML syntax",
                )
            )
            return spec_file, {}
        entry_points = data.get("argument_specs") if isinstance(data, Mapping) else None
        if isinstance(entry_points, Mapping):
            return spec_file, entry_points
        if spec_file.name != "main.yml":
            problems.append(
                Problem(
                    f"role '{role_dir.name}'",
                    f"{spec_file.relative_to(role_dir)} has no 'argument_specs' mapping; "
                    "start it with 'argument_specs: {main: {options: ...}}'",
                )
            )
            return spec_file, {}
    return None, {}


def _spec_from_option(name: str, option: Any, source: str) -> VariableSpec:
    if not isinstance(option, Mapping):
        return VariableSpec(name, type="raw", sources=(source,))
    description = option.get("description", "")
    if isinstance(description, list):
        description = " ".join(str(line) for line in description)
    choices = option.get("choices") or ()
    return VariableSpec(
        name=name,
        # An argument spec option without a type is a string, as in Ansible itself.
        type=str(option.get("type") or "str"),
        choices=tuple(choices) if isinstance(choices, list | tuple) else (),
        elements=str(option["elements"]) if option.get("elements") else None,
        required=bool(option.get("required", False)),
        default=option.get("default"),
        description=str(description),
        sources=(source,),
    )


def _merge_specs(old: VariableSpec | None, new: VariableSpec) -> VariableSpec:
    """Two declarations of one name (two roles reading a shared variable): accept any value that
    either accepts, so the check never rejects what a role would take."""
    if old is None:
        return new
    same_type = old.type == new.type
    return VariableSpec(
        name=old.name,
        type=old.type if same_type else "raw",
        choices=tuple(dict.fromkeys((*old.choices, *new.choices)))
        if old.choices and new.choices
        else (),
        elements=old.elements if same_type and old.elements == new.elements else None,
        required=old.required and new.required,
        default=old.default if old.default is not None else new.default,
        description=old.description or new.description,
        sources=tuple(dict.fromkeys((*old.sources, *new.sources))),
    )


# --- loading the inventory with Ansible -----------------------------------------------------


@dataclass(frozen=True)
class _Warning:
    """One warning Ansible wanted to print, kept instead of printed."""

    message: str
    help_text: str | None = None
    plugin: str | None = None
    error: BaseException | None = None


@contextlib.contextmanager
def _captured_ansible_warnings() -> Iterator[list[_Warning]]:
    """Collect Ansible's warnings instead of letting them reach the user's terminal.

    Ansible reports an unparsable inventory as warnings, not errors, and a check's output must be
    its problems only. Display is a process-wide singleton that every Ansible module calls through,
    so its public warning methods are shadowed on the instance for the duration, then restored.
    """
    display: Any = Display()
    captured: list[_Warning] = []

    def warning(
        msg: str, formatted: bool = False, *, help_text: str | None = None, obj: Any = None
    ) -> None:
        del formatted, obj
        captured.append(_Warning(str(msg), help_text))

    def error_as_warning(
        msg: str | None, exception: BaseException, *, help_text: str | None = None, obj: Any = None
    ) -> None:
        del obj
        plugin = re.search(r"with '([\w.]+)' plugin", msg or "")
        captured.append(
            _Warning(str(msg or exception), help_text, plugin[1] if plugin else None, exception)
        )

    def deprecated(*args: Any, **kwargs: Any) -> None:
        # Ansible's deprecations address plugin authors, not the inventory's author.
        del args, kwargs

    replacements = {
        "warning": warning,
        "error_as_warning": error_as_warning,
        "deprecated": deprecated,
    }
    saved = {name: display.__dict__[name] for name in replacements if name in display.__dict__}
    for name, replacement in replacements.items():
        setattr(display, name, replacement)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for name in replacements:
            if name in saved:
                setattr(display, name, saved[name])
            else:
                delattr(display, name)


class _CheckLoader(DataLoader):  # type: ignore[misc]  # ansible-core ships no type hints
    """Ansible's DataLoader, made safe for a check once the inventory is parsed (``lenient``):

    - a vault-encrypted vars file is skipped, never decrypted (a check runs without the password);
    - a vars file that is not YAML, or not a mapping, is recorded and read as empty, so that one
      broken file is one problem instead of an exception that hides every other problem.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lenient = False
        self.unreadable: dict[str, str] = {}
        self.encrypted: set[str] = set()

    def load_from_file(self, file_name: str, *args: Any, **kwargs: Any) -> Any:
        if not self.lenient:
            return super().load_from_file(file_name, *args, **kwargs)
        path = str(self.path_dwim(file_name))
        if path in self.unreadable or path in self.encrypted:
            return {}
        try:
            with open(path, "rb") as handle:
                if is_encrypted_file(handle):
                    self.encrypted.add(path)
                    return {}
            data = super().load_from_file(file_name, *args, **kwargs)
        except (AnsibleError, OSError, UnicodeDecodeError) as error:
            self.unreadable[path] = _short_reason(error)
            return {}
        if data is not None and not isinstance(data, Mapping):
            self.unreadable[path] = f"it holds {_a_type(data)}, not a mapping of variables"
            return {}
        return data


def _parse_inventory(path: Path, loader: _CheckLoader) -> tuple[Any, BaseException | None]:
    """(the InventoryManager, or None if no source parsed; the error if Ansible gave up).

    Ansible reports a source it cannot parse as warnings, not errors; those are captured by the
    caller and turned into problems by :meth:`_Report.absorb_ansible_warnings`.
    """
    try:
        inventory = InventoryManager(loader=loader, sources=[str(path)])
    except AnsibleError as error:
        # ansible.cfg may make an unparsed inventory fatal ([inventory] any_unparsed_is_failed).
        return None, error
    if not inventory._inventory.processed_sources:  # no public accessor says "nothing parsed"
        return None, None
    return inventory, None


def _parse_failure_reason(source: str, failures: Mapping[str, BaseException]) -> str | None:
    """The most telling of the inventory plugins' failures: each plugin that tried says why it
    could not parse the source, and for a .yml file the ini plugin's complaint is noise."""
    if Path(source).suffix in (".yml", ".yaml", ".json"):
        preference = ("yaml", "auto", "ini", "toml")
    else:
        preference = ("ini", "yaml", "toml", "auto")
    by_short_name = {plugin.removeprefix("ansible.builtin."): e for plugin, e in failures.items()}
    for plugin in (*preference, *by_short_name):
        error = by_short_name.get(plugin)
        if error is not None:
            return _short_reason(error)
    return None


def _syntax_hint(source: str) -> str:
    suffix = Path(source).suffix
    if suffix in (".yml", ".yaml", ".json"):
        return "fix the YAML syntax"
    if suffix in (".ini", ".cfg", ""):
        return "fix the INI syntax"
    return "fix the YAML/INI syntax"


# --- the checks -----------------------------------------------------------------------------


@dataclass
class _Report:
    """Problems sorted into the order a user reads them in, without duplicates."""

    files: list[Problem] = field(default_factory=list)
    groups: list[Problem] = field(default_factory=list)
    hosts: list[Problem] = field(default_factory=list)
    variables: list[Problem] = field(default_factory=list)

    def ordered(self) -> list[Problem]:
        return list(dict.fromkeys([*self.files, *self.groups, *self.hosts, *self.variables]))

    def absorb_ansible_warnings(
        self, captured: Sequence[_Warning], path: Path, fatal: BaseException | None
    ) -> None:
        """Turn what Ansible said while parsing into problems.

        Each source Ansible could not parse is announced by one failure per plugin that tried,
        then "Unable to parse <source>"; that becomes one problem with the best failure's reason.
        Other warnings mean Ansible uses something other than what the user wrote (a key ignored,
        a duplicate dropped): a check reports them too.
        """
        failures: dict[str, BaseException] = {}
        unparsed = False
        for warning in captured:
            if warning.error is not None:
                failures[warning.plugin or f"plugin {len(failures)}"] = warning.error
            elif source := _unparsed_source(warning.message):
                self._unparsed(source, path, failures)
                failures, unparsed = {}, True
            elif not warning.message.startswith("No inventory was parsed"):
                self._absorb(warning, f"inventory '{path}'")
        if fatal is not None and not unparsed:
            # ansible.cfg made the first unparsable source fatal: the error names that source.
            source = _unparsed_source(str(fatal)) or str(path)
            self._unparsed(source, path, failures, fallback=_short_reason(fatal))

    def _unparsed(
        self,
        source: str,
        path: Path,
        failures: Mapping[str, BaseException],
        fallback: str = "no inventory plugin accepted it",
    ) -> None:
        # Name the file as the user gave it, not as Ansible normalised it.
        source = str(path) if Path(source) == path.absolute() else source
        reason = _parse_failure_reason(source, failures) or fallback
        self.files.append(
            Problem(
                f"inventory '{source}'",
                f"cannot be parsed as an inventory ({reason}); {_syntax_hint(source)}",
            )
        )

    def absorb_file_warning(self, warning: _Warning, where: str) -> None:
        """A warning Ansible gave while reading one vars file."""
        self._absorb(warning, where)

    def _absorb(self, warning: _Warning, where: str) -> None:
        text = warning.message
        if unexpected := re.match(r"Skipping unexpected key \((.+?)\) in group \((.+?)\)", text):
            key, group = unexpected[1], unexpected[2]
            self.groups.append(
                Problem(
                    f"group '{group}'",
                    f"unexpected key '{key}'{did_you_mean(key, ('hosts', 'children', 'vars'))}; "
                    "a group holds only 'hosts', 'children' and 'vars'",
                )
            )
        elif duplicate := re.match(r"Found duplicate mapping key '(.+?)'", text):
            self.files.append(
                Problem(
                    where,
                    f"'{duplicate[1]}' appears twice in one mapping and Ansible keeps only the "
                    "last; merge the two entries or remove one",
                )
            )
        elif invalid := re.match(r"Skipping '(.+?)' as this is not a valid group definition", text):
            self.files.append(
                Problem(
                    where,
                    f"'{invalid[1]}' is not a valid group definition; a group is a mapping with "
                    "'hosts', 'children' or 'vars' (put groups under 'all: children:')",
                )
            )
        else:
            detail = f" ({warning.help_text.rstrip('.')})" if warning.help_text else ""
            self.files.append(
                Problem(
                    where,
                    f"Ansible warns: {text.rstrip('.')}{detail}; change the inventory so that it "
                    "loads without warnings",
                )
            )


def _unparsed_source(message: str) -> str | None:
    """The source named by Ansible's "could not parse" warning (or, when fatal, error)."""
    found = re.match(r"Unable to parse (.+) as an inventory source$", message) or re.match(
        r"Completely failed to parse inventory source (.+)$", message
    )
    return found[1] if found else None


@dataclass(frozen=True)
class _VarSource:
    """Variables as one place sets them: a group or host in the inventory, or one vars file."""

    where: str  # "group 'lb'", "host 'app1'", "group 'lb', group_vars/lb.yml"
    variables: Mapping[str, Any]


class _InventoryCheck:
    """The checks on a parsed inventory; ``run`` adds what it finds to a report."""

    def __init__(
        self,
        path: Path,
        inventory: Any,
        loader: _CheckLoader,
        known: Mapping[str, VariableSpec],
        *,
        check_names: bool,
    ) -> None:
        self.path = path
        self.basedir = path if path.is_dir() else path.parent
        self.inventory = inventory
        self.loader = loader
        self.known = known
        self.check_names = check_names
        self.groups: dict[str, Any] = dict(inventory.groups)
        self.hosts: dict[str, Any] = dict(inventory.hosts)
        self.variable_manager: Any = None

    def run(self, report: _Report) -> None:
        # Vars files are read (and any broken one recorded) before VariableManager merges them,
        # so that it finds them in the loader's cache, already made safe.
        sources = self._variable_sources(report)
        self.variable_manager = VariableManager(loader=self.loader, inventory=self.inventory)
        self._check_groups(report)
        self._check_hosts(report)
        for source in sources:
            for name in sorted(source.variables):
                problem = self._check_variable(name, source.variables[name], source.where)
                if problem is not None:
                    report.variables.append(problem)
        for file_name, reason in sorted(self.loader.unreadable.items()):
            report.files.append(
                Problem(
                    f"vars file '{file_name}'",
                    f"cannot be read ({reason}); fix it so that it is a YAML mapping of "
                    "variable names to values",
                )
            )

    # groups

    def _check_groups(self, report: _Report) -> None:
        for name in REQUIRED_GROUPS:
            group = self.groups.get(name)
            if group is None or not group.get_hosts():
                report.groups.append(
                    Problem(
                        f"group '{name}'",
                        "missing or empty; add at least one host under it "
                        f"({GROUP_PURPOSES[name]})",
                    )
                )
        for name in sorted(self.groups):
            if name in REQUIRED_GROUPS or name in _IMPLICIT_GROUPS:
                continue
            suggestion = did_you_mean(name, REQUIRED_GROUPS)
            report.groups.append(
                Problem(
                    f"group '{name}'",
                    f"not a deploykit group{suggestion}; rename it, or move its hosts into "
                    f"{', '.join(REQUIRED_GROUPS)} and remove it",
                )
            )

    # hosts

    def _check_hosts(self, report: _Report) -> None:
        by_group_address: dict[tuple[str, str, int], str] = {}
        for name, host in self.hosts.items():
            effective = self._effective_vars(host, report)
            groups = [g.name for g in host.get_groups() if g.name not in _IMPLICIT_GROUPS]
            if not set(groups) & set(REQUIRED_GROUPS):
                report.hosts.append(
                    Problem(
                        f"host '{name}'",
                        "is in no deploykit group, so no role would run on it; add it to one of "
                        f"{', '.join(REQUIRED_GROUPS)}, or remove it",
                    )
                )
            connection = effective.get("ansible_connection")
            if _is_unchecked(connection) or not reached_over_ssh(connection):
                continue  # not reached over the network: its "address" is not an IP or DNS name
            address = self._check_address(name, effective, report)
            if address is None:
                continue
            port = _as_int(effective.get("ansible_port"), default=DEFAULT_SSH_PORT)
            for group in sorted(groups, key=_group_order):
                first = by_group_address.setdefault((group, address, port), name)
                if first != name:
                    report.hosts.append(
                        Problem(
                            f"host '{name}'",
                            f"has the same address as host '{first}' ({address}, port {port}) in "
                            f"group '{group}'; give each host its own ansible_host",
                        )
                    )
                    break

    def _effective_vars(self, host: Any, report: _Report) -> Mapping[str, Any]:
        """The host's variables after Ansible's own precedence (groups by depth and priority, then
        the host; inventory, then group_vars/host_vars files), as a play would see them before
        templating."""
        try:
            merged: Mapping[str, Any] = self.variable_manager.get_vars(
                host=host, include_hostvars=False
            )
        except AnsibleError as error:
            report.hosts.append(
                Problem(
                    f"host '{host.name}'",
                    f"Ansible cannot work out its variables ({_short_reason(error)}); fix the "
                    "variables set for it and its groups",
                )
            )
            return {}
        return merged

    def _check_address(
        self, name: str, effective: Mapping[str, Any], report: _Report
    ) -> str | None:
        """The host's address (ansible_host, else its inventory name) if it is a valid one."""
        address = effective.get("ansible_host")
        if address is None:
            if _valid_hostname(name) or _valid_ip(name):
                return name
            problem: str | None = (
                f"has no ansible_host and its name '{name}' is not a valid hostname "
                "(RFC 1123: letters, digits, '-' and '.'); set ansible_host to its IP address "
                "or DNS name"
            )
        elif _is_unchecked(address):
            return None
        else:
            problem = _address_problem(address)
        if problem is None:
            return str(address)
        report.hosts.append(Problem(f"host '{name}'", problem))
        return None

    # variables

    def _variable_sources(self, report: _Report) -> list[_VarSource]:
        """Every place a variable is set, in reading order: group 'all', the other groups, the
        hosts; for each, the inventory first and then its group_vars/host_vars files."""
        sources: list[_VarSource] = []
        for name in sorted(self.groups, key=_group_order):
            where = f"group '{name}'"
            sources.append(_VarSource(where, dict(self.groups[name].get_vars())))
            sources.extend(self._file_sources("group_vars", name, where, report))
        for name, host in self.hosts.items():
            where = f"host '{name}'"
            own = {k: v for k, v in host.get_vars().items() if k not in _ANSIBLE_ADDED_HOST_VARS}
            sources.append(_VarSource(where, own))
            sources.extend(self._file_sources("host_vars", name, where, report))
        self._check_vars_file_names("group_vars", set(self.groups), "group", report)
        self._check_vars_file_names("host_vars", set(self.hosts), "host", report)
        return sources

    def _file_sources(
        self, subdir: str, name: str, where: str, report: _Report
    ) -> list[_VarSource]:
        directory = self.basedir / subdir
        if not directory.is_dir():
            return []
        sources = []
        for found in self.loader.find_vars_files(str(directory), name):
            # Warnings while reading one file (a duplicate key) are that file's problems.
            with _captured_ansible_warnings() as said:
                data = self.loader.load_from_file(found, cache="all", unsafe=True)
            for warning in said:
                report.absorb_file_warning(warning, f"vars file '{found}'")
            relative = Path(found).relative_to(self.basedir).as_posix()
            sources.append(_VarSource(f"{where}, {relative}", dict(data or {})))
        return sources

    def _check_vars_file_names(
        self, subdir: str, names: set[str], kind: str, report: _Report
    ) -> None:
        """Files Ansible silently ignores: named after no group/host, or shadowed by another."""
        directory = self.basedir / subdir
        if not directory.is_dir():
            return
        entries: dict[str, list[Path]] = {}
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(".") or entry.name.endswith("~"):
                continue
            stem, suffix = (entry.name, "") if entry.is_dir() else (entry.stem, entry.suffix)
            if suffix not in _VARS_FILE_EXTENSIONS:
                continue
            entries.setdefault(stem, []).append(entry)
        for stem, paths in entries.items():
            if stem not in names:
                report.files.append(
                    Problem(
                        f"vars file '{paths[0]}'",
                        f"there is no {kind} '{stem}' in the inventory, so Ansible ignores it; "
                        f"rename it after a {kind}{did_you_mean(stem, sorted(names))}",
                    )
                )
                continue
            order = {ext: i for i, ext in enumerate(_VARS_FILE_EXTENSIONS)}
            paths.sort(key=lambda p: order["" if p.is_dir() else p.suffix])
            for shadowed in paths[1:]:
                report.files.append(
                    Problem(
                        f"vars file '{shadowed}'",
                        f"ignored by Ansible, which reads {paths[0].name}"
                        f"{'/' if paths[0].is_dir() else ''} instead; merge the two",
                    )
                )

    def _check_variable(self, name: str, value: Any, where: str) -> Problem | None:
        at = f"variable '{name}' ({where})"
        spec = self.known.get(name)
        if spec is None:
            if name.startswith(_KNOWN_PREFIXES) or not self.check_names:
                return None
            suggestion = did_you_mean(name, self.known)
            return Problem(
                at,
                f"unknown variable{suggestion}; no role declares it in meta/argument_specs.yml: "
                "fix the name or remove it (a value kept in the vault is named vault_*)",
            )
        message = _type_problem(spec, value)
        return Problem(at, message) if message else None


# --- values ---------------------------------------------------------------------------------


def _type_problem(spec: VariableSpec, value: Any) -> str | None:
    """What is wrong with ``value`` for ``spec``, phrased with the fix; None if nothing is.

    Values are accepted as the role's argument validation would accept them (Ansible's own
    converters: '8404' is an int, 'yes' a bool): a check that rejects what a run accepts would be
    ignored. It is stricter in two places where the conversion hides a mistake: a boolean is never
    a number, and a list or mapping is never a string.
    """
    if value is None or _is_unchecked(value):
        return None
    converted, problem = _convert(spec, value)
    if problem is not None:
        return problem
    if spec.type == "list" and isinstance(converted, list):
        return _elements_problem(spec, converted)
    if spec.choices and not isinstance(converted, list | dict) and converted not in spec.choices:
        return (
            f"expected one of {_choices(spec.choices)}, got {_show(value)}"
            f"{_did_you_mean_value(value, spec.choices)}"
        )
    return None


def _elements_problem(spec: VariableSpec, items: list[Any]) -> str | None:
    """The first item of a list option that its ``elements`` type or ``choices`` reject."""
    item_spec = VariableSpec(spec.name, type=spec.elements or "raw")
    for index, item in enumerate(items, start=1):
        if item is None or _is_unchecked(item):
            continue
        _, problem = _convert(item_spec, item)
        if problem is not None:
            what = _PLURALS.get(item_spec.type, f"{item_spec.type} values")
            return f"expected a list of {what}, item {index} is {_show(item)}; fix that item"
        if spec.choices and item not in spec.choices:
            return (
                f"item {index} is {_show(item)}, but each item must be one of "
                f"{_choices(spec.choices)}{_did_you_mean_value(item, spec.choices)}"
            )
    return None


_PLURALS: Final[Mapping[str, str]] = {
    "int": "integers",
    "float": "numbers",
    "bool": "booleans",
    "str": "strings",
    "path": "paths",
    "list": "lists",
    "dict": "mappings",
    "ip": "IP addresses",
}

# A converter returns (the value as the role would receive it, None) or (None, what to change).
_Converted = tuple[Any, str | None]


def _convert(spec: VariableSpec, value: Any) -> _Converted:
    converter = _CONVERTERS.get(spec.type)
    # raw, json, jsonarg and any type this check does not know: anything goes.
    return converter(spec, value) if converter else (value, None)


def _to_int(spec: VariableSpec, value: Any) -> _Converted:
    got = _show(value)
    if spec.name.endswith("_port"):
        hint = f"set a port number such as {_example_port(spec)}"
    else:
        hint = f"set a whole number such as {_example(spec, int, 1)}"
    number = None if isinstance(value, bool) else _try(check_type_int, value)
    if not isinstance(number, int):
        return None, f"expected an integer, got {got}; {hint}"
    if spec.name.endswith("_port") and not 1 <= number <= _MAX_PORT:
        return None, f"expected a port number from 1 to {_MAX_PORT}, got {got}; {hint}"
    return number, None


def _to_float(spec: VariableSpec, value: Any) -> _Converted:
    number = None if isinstance(value, bool) else _try(check_type_float, value)
    if not isinstance(number, float):
        example = _example(spec, float, 1.5)
        return None, f"expected a number, got {_show(value)}; set a number such as {example}"
    return number, None


def _to_bool(spec: VariableSpec, value: Any) -> _Converted:
    del spec
    flag = _try(check_type_bool, value)
    if not isinstance(flag, bool):
        return None, f"expected a boolean, got {_show(value)}; set true or false"
    return flag, None


def _to_str(spec: VariableSpec, value: Any) -> _Converted:
    if isinstance(value, bool | list | dict | Mapping):
        example = _example(spec, str, None)
        such = f" such as '{example}'" if example else ""
        quote = " (quote it if the text is meant)" if isinstance(value, bool) else ""
        return None, f"expected a string, got {_show(value)}; set a single string{such}{quote}"
    return str(value), None


def _to_list(spec: VariableSpec, value: Any) -> _Converted:
    del spec
    items = None if isinstance(value, Mapping | bool) else _try(check_type_list, value)
    if not isinstance(items, list):
        return None, (
            f"expected a list, got {_show(value)}; write it as a YAML list, one '- item' a line"
        )
    return items, None


def _to_dict(spec: VariableSpec, value: Any) -> _Converted:
    del spec
    mapping = None if isinstance(value, list | bool) else _try(check_type_dict, value)
    if not isinstance(mapping, Mapping):
        return None, f"expected a mapping, got {_show(value)}; write it as 'key: value' lines"
    return dict(mapping), None


def _to_size(spec: VariableSpec, value: Any) -> _Converted:
    checker = check_type_bits if spec.type == "bits" else check_type_bytes
    size = None if isinstance(value, bool) else _try(checker, value)
    if not isinstance(size, int):
        return None, f"expected a size, got {_show(value)}; set a size such as 512M"
    return size, None


def _to_ip(spec: VariableSpec, value: Any) -> _Converted:
    del spec
    if not _valid_ip(value):
        return None, (
            f"expected an IPv4 or IPv6 address, got {_show(value)}; set the host's address on "
            "the private network, such as 10.0.0.11"
        )
    return str(value), None


_CONVERTERS: Final[Mapping[str, Callable[[VariableSpec, Any], _Converted]]] = {
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "str": _to_str,
    "path": _to_str,
    "list": _to_list,
    "dict": _to_dict,
    "bytes": _to_size,
    "bits": _to_size,
    "ip": _to_ip,
}


def _try(checker: Any, value: Any) -> Any:
    try:
        return checker(value)
    except (TypeError, ValueError):
        return None


def _example(spec: VariableSpec, kind: type, fallback: Any) -> Any:
    default = spec.default
    if isinstance(default, kind) and not isinstance(default, bool) and not _is_unchecked(default):
        return default
    return fallback


def _example_port(spec: VariableSpec) -> int:
    default = spec.default
    if isinstance(default, int) and not isinstance(default, bool) and 1 <= default <= _MAX_PORT:
        return default
    return 8080


def _as_int(value: Any, *, default: int) -> int:
    if isinstance(value, bool) or value is None or _is_unchecked(value):
        return default
    number = _try(check_type_int, value)
    return number if isinstance(number, int) else default


def _is_unchecked(value: Any) -> bool:
    """Values a check must not look into: vault-encrypted (reading one would try to decrypt it) and
    templates (their value is only known when a play runs)."""
    names = {cls.__name__ for cls in type(value).__mro__}
    if names & {"EncryptedString", "AnsibleVaultEncryptedUnicode"}:
        return True
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _show(value: Any) -> str:
    """A value as a user would recognise it from their YAML, kept short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = str(value)
        return f"'{text[:57]}...'" if len(text) > 60 else f"'{text}'"
    if isinstance(value, int | float):
        return str(value)
    return _a_type(value)


def _a_type(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def _choices(choices: Sequence[Any]) -> str:
    return ", ".join(_show(c) for c in choices)


def did_you_mean(word: str, candidates: Sequence[str] | Mapping[str, Any]) -> str:
    """' (did you mean 'X'?)' for the candidate closest to a mistyped ``word``, else ''."""
    # 0.8: catches a swapped or missing letter (redis_prot, appp) without offering a merely
    # similar name (redis_password is not redis_port).
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.8)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _did_you_mean_value(value: Any, choices: Sequence[Any]) -> str:
    if isinstance(value, str):
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
        if close:
            return f"; did you mean '{close[0]}'?"
    return "; set one of those"


def _group_order(name: str) -> tuple[int, str]:
    """'all' first, then the required groups in topology order, then the rest by name."""
    if name == "all":
        return (0, "")
    if name in REQUIRED_GROUPS:
        return (1, f"{REQUIRED_GROUPS.index(name):02d}")
    return (2, name)


# --- addresses ------------------------------------------------------------------------------

_HOST_LABEL: Final = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAX_HOSTNAME: Final = 253


def _valid_ip(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def _valid_hostname(value: str) -> bool:
    """RFC 1123: dot-separated labels of letters, digits and inner hyphens; 253 characters."""
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > _MAX_HOSTNAME:
        return False
    return all(_HOST_LABEL.match(label) for label in name.split("."))


def _address_problem(address: Any) -> str | None:
    """What is wrong with an ansible_host value, with the fix; None if it is an IP or a name."""
    fix = "set it to the host's IP address or DNS name"
    if not isinstance(address, str):
        return f"ansible_host is {_show(address)}, not an address; {fix}"
    if _looks_like_ipv4(address) and not _valid_ip(address):
        return f"ansible_host '{address}' is not a valid IPv4 address; {fix}"
    if not (_valid_ip(address) or _valid_hostname(address)):
        return (
            f"ansible_host '{address}' is neither an IP address nor a valid hostname "
            f"(RFC 1123: letters, digits, '-' and '.'); {fix}"
        )
    return None


def _looks_like_ipv4(value: str) -> bool:
    """Dotted digits are meant as an IPv4 address even though RFC 1123 would call them a name."""
    return bool(re.fullmatch(r"[0-9.]+", value)) and "." in value


# --- error text -----------------------------------------------------------------------------


def _short_reason(error: BaseException) -> str:
    """One line of an exception for a problem message: the first line of its text, Ansible's
    internal type names replaced by plain ones, and the YAML line and column when known."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        text = error.problem  # PyYAML's first line is the context, not the problem
    else:
        lines = str(error).strip().splitlines()
        text = lines[0] if lines else type(error).__name__
    for noise in ("Failed to parse inventory: ", "YAML parsing failed: "):
        text = text.removeprefix(noise)
    text = re.sub(
        r"<class '(?:[\w.]+\.)?(?:_AnsibleTagged)?(\w+)'>", lambda m: m[1].lower(), text
    ).rstrip(".")
    mark = _yaml_mark(error)
    if mark is not None and not re.search(r"\bline \d", text):
        text += f" at line {mark.line + 1}, column {mark.column + 1}"
    return text


def _yaml_mark(error: BaseException) -> Any:
    """The position PyYAML recorded for a syntax error, found through the exception's causes."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, yaml.MarkedYAMLError) and current.problem_mark is not None:
            return current.problem_mark
        current = current.__cause__ or current.__context__
    return None


# --- reading an inventory's layout -------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What a rollout needs to know of an inventory before it runs: each group's hosts, in the order
    Ansible runs them, and the application name(s) the inventory declares (deploykit_app_name)."""

    groups: Mapping[str, list[str]]
    app_names: frozenset[str]


@dataclass(frozen=True)
class OpenedInventory:
    """An inventory parsed for reading (:func:`opened`): Ansible's own objects."""

    manager: InventoryManager
    variables: VariableManager
    loader: DataLoader


@contextlib.contextmanager
def opened(path: Path) -> Iterator[OpenedInventory]:
    """The inventory at ``path`` parsed as `deploykit check` parses it, for reading what it says
    (validate it first: problems are not reported here). Vault-encrypted vars files are skipped,
    never decrypted; Ansible's warnings stay off the terminal while the block runs.

    Raises :class:`BadInput` when no source of it can be parsed."""
    with _captured_ansible_warnings():
        loader = _CheckLoader()
        loader.lenient = True
        manager, _ = _parse_inventory(path, loader)
        if manager is None:
            raise BadInput(f"inventory '{path}' could not be read: run deploykit check -i {path}")
        yield OpenedInventory(manager, VariableManager(loader=loader, inventory=manager), loader)


def read_layout(path: Path) -> Layout:
    """The groups and the declared application names of the inventory at ``path`` (validate it
    first: this reads without reporting problems). Nothing is decrypted or templated."""
    with opened(path) as inventory:
        manager, variables = inventory.manager, inventory.variables
        groups = {
            name: [host.name for host in manager.get_hosts(pattern=name)]
            for name in manager.groups
            if name not in _IMPLICIT_GROUPS
        }
        names = set()
        for host in manager.get_hosts():
            value = variables.get_vars(host=host, include_hostvars=False).get("deploykit_app_name")
            if isinstance(value, str) and value and "{{" not in value:
                names.add(value)
    return Layout(groups=groups, app_names=frozenset(names))


# --- how a host is reached over SSH -----------------------------------------------------------
# The one home for it: `deploykit check` checks the address of every host reached over SSH, and
# `deploykit exec` and `logs` connect with ssh_options (deploykit.remote).

#: Connections that reach a host over SSH, by ansible_host/ansible_port (Ansible's default,
#: "smart", is ssh too). Others (local, docker, podman...) address the host by something that is
#: not an IP or DNS name.
SSH_CONNECTIONS: Final = frozenset(
    {
        "ssh",
        "smart",
        "paramiko",
        "paramiko_ssh",
        "ansible.builtin.ssh",
        "ansible.builtin.paramiko_ssh",
    }
)

# The ssh plugin's options that say where a host is and how to log in to it.
_SSH_OPTIONS: Final = (
    "host",
    "port",
    "remote_user",
    "password",
    "private_key",
    "private_key_file",
    "private_key_passphrase",
    "ssh_args",
    "ssh_common_args",
    "ssh_extra_args",
)


def reached_over_ssh(connection: Any) -> bool:
    """Whether a host whose ``ansible_connection`` is ``connection`` (None: not set, so
    ansible.cfg's transport) is reached over SSH, by its address and port."""
    transport = ansible_constants.DEFAULT_TRANSPORT if connection is None else connection
    return str(transport) in SSH_CONNECTIONS


def ssh_options(inventory: OpenedInventory, name: str) -> dict[str, Any]:
    """How host ``name`` is reached over SSH, as ``ansible`` would reach it: the options Ansible's
    own ``ssh`` connection plugin resolves from the host's variables (templates rendered), with
    Ansible's precedence among aliases (``ansible_ssh_host`` over ``ansible_host``...) and
    ansible.cfg's defaults (``ssh_args``). Keys: the plugin's ``host``, ``port``, ``remote_user``,
    ``password``, ``private_key``, ``private_key_file``, ``private_key_passphrase``, ``ssh_args``,
    ``ssh_common_args`` and ``ssh_extra_args``; None where nothing sets one.

    Raises :class:`BadInput` naming the host and the variable, never its value, when the host is
    not reached over SSH, or a variable cannot be rendered (nothing is decrypted: a template that
    needs the vault cannot) or Ansible rejects it."""
    host = inventory.manager.get_host(name)
    if host is None:
        raise BadInput(f"host '{name}' is not in the inventory")
    try:
        effective = inventory.variables.get_vars(host=host, include_hostvars=False)
    except AnsibleError as error:
        raise BadInput(
            f"host '{name}': Ansible cannot work out its variables ({type(error).__name__}); "
            "run deploykit check"
        ) from None
    templar = Templar(loader=inventory.loader, variables=effective)

    def rendered(variable: str) -> Any:
        try:
            return templar.template(effective[variable])
        except AnsibleError as error:
            raise BadInput(
                f"host '{name}': {variable} is a template that cannot be rendered here "
                f"({type(error).__name__}); exec and logs decrypt nothing: set it to a plain value"
            ) from None

    if not reached_over_ssh(
        rendered("ansible_connection") if "ansible_connection" in effective else None
    ):
        raise BadInput(
            f"host '{name}' is not reached over SSH (its ansible_connection is not ssh); "
            "deploykit exec speaks SSH only: use `ansible` for this host"
        )
    # The short name: a FQCN needs the collection loader, which only Ansible's own CLIs install.
    plugin = connection_loader.get("ssh", PlayContext())
    if plugin is None:
        raise DeploykitError(
            "Ansible's ssh connection plugin cannot be loaded: reinstall deploykit"
        )
    variables = ansible_constants.config.get_plugin_vars("connection", "ssh")
    try:
        plugin.set_options(var_options={v: rendered(v) for v in variables if v in effective})
    except AnsibleError as error:
        raise BadInput(
            f"host '{name}': Ansible rejects its connection variables ({type(error).__name__}); "
            "run deploykit check"
        ) from None
    return {option: plugin.get_option(option) for option in _SSH_OPTIONS}
