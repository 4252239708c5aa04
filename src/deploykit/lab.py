"""The lab: real Debian 12 hosts as Docker containers booted with systemd, reached over SSH.

The lab exists so that every role and every deploy is exercised the way it runs on real servers:
systemd as PID 1, sshd with its own host keys, Ansible connecting over SSH with a key pair that
deploykit generates and a known_hosts file it writes (host keys are checked, not ignored).

No registry is needed: the base image is built offline with debootstrap from Debian's mirror, tagged
with a hash of its recipe, and reused until the recipe changes.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploykit.errors import BadInput, LabError
from deploykit.project import lab_inventory_dir, project_root

Log = Callable[[str], object]

NETWORK_NAME = "deploykit-lab"
CONTAINER_PREFIX = "deploykit-lab-"
DEFAULT_SUBNET = "172.30.99.0/24"
LABEL = "io.deploykit.lab"
IMAGE_REPOSITORY = "deploykit/debian"
# The alias molecule scenarios use; always points at the image of the current recipe.
IMAGE_ALIAS = f"{IMAGE_REPOSITORY}:12"
PROFILES = {"full": 3, "small": 1, "ha": 3}  # profile -> default number of app clones
# The ha profile's floating address (keepalived): the last usable address of the first /24.
HA_VIRTUAL_ADDRESS_OFFSET = 254
DOCSTORE_ENGINES = ("postgresql", "mongodb")
# MongoDB's packages cannot be downloaded from these machines, so the lab's document store is
# PostgreSQL (JSONB documents, the second supported engine) unless asked otherwise.
DEFAULT_LAB_DOCSTORE = "postgresql"

# Secrets the roles require, generated once per lab and kept in a root-only file next to the
# inventory (production keeps them in an Ansible Vault; see inventories/production/).
LAB_SECRETS: dict[str, Callable[[], str]] = {
    "haproxy_stats_password": lambda: secrets.token_urlsafe(24),
    "app_secret_key": lambda: secrets.token_urlsafe(32),
    "redis_password": lambda: secrets.token_urlsafe(24),
    "rabbitmq_app_password": lambda: secrets.token_urlsafe(24),
    "postgresql_app_password": lambda: secrets.token_urlsafe(24),
    "mongodb_admin_password": lambda: secrets.token_urlsafe(24),
    "mongodb_app_password": lambda: secrets.token_urlsafe(24),
    # mongod's key file: base64 characters only, 6 to 1024 of them.
    "mongodb_replica_set_key": lambda: base64.b64encode(secrets.token_bytes(96)).decode(),
    # The RabbitMQ cluster's Erlang cookie (the ha profile); a single node is given it too.
    "rabbitmq_erlang_cookie": lambda: secrets.token_hex(32),
}
MAX_APP_CLONES = 100

# --- the base image recipe: anything that changes the image belongs here (it is hashed) --------

# The packages the roles install are baked in too (BAKED_PACKAGES): a molecule scenario or a lab
# host then spends no time downloading and unpacking them (CI ran apt in every container of every
# scenario). Lab image only: the roles still install every one of them with apt, so a real server
# gets them as before (the roles ask dpkg first and run apt when one is missing). Baked:
# - the common role's base packages, the libraries the roles' Ansible modules need, and the
#   services haproxy, keepalived, redis, rabbitmq and static (nginx) configure. Their units are
#   disabled in the image (BAKED_UNITS_DISABLED): each role writes its configuration, then enables
#   and starts its service itself, so it finds the same state as on a server that has just
#   installed the package, minus Debian's default configuration running for a moment.
#   RabbitMQ's postinst writes the node's Erlang cookie: the image has none, each container
#   writes its own at first boot.
# - not PostgreSQL's server: installing it creates and starts the cluster 15/main and ssl-cert
#   makes the snakeoil key pair that the cluster serves TLS with; baked, every lab host would share
#   one cluster (its system identifier, made in a chroot) and one private key. Only its large
#   dependencies are baked (no maintainer script of theirs makes anything host-specific).
# - not MongoDB (not downloadable here; its role installs it from MongoDB's repository or .debs).
# debootstrap installs from the suite only (not -updates or -security): a baked package is the
# point release's version until a role or an upgrade replaces it.
BAKED_PACKAGES = [
    # common (common_packages, systemd-timesyncd)
    "acl",
    "curl",
    "nftables",
    "tzdata",
    "systemd-timesyncd",
    # haproxy (socat: its runtime API); keepalived: the balancers' floating address
    "haproxy",
    "socat",
    "keepalived",
    # redis (redis-sentinel: with redis_sentinel)
    "redis-server",
    "redis-tools",
    "redis-sentinel",
    # rabbitmq (python3-requests: community.rabbitmq's modules); the worker scenario's broker too;
    # python3-pika: the rabbitmq scenario's AMQP probe
    "rabbitmq-server",
    "python3-requests",
    "python3-pika",
    # static
    "nginx",
    # postgresql: the library of community.postgresql's modules, and the server's dependencies
    # without the server (see above); postgresql-client: the postgresql scenario's probe
    "python3-psycopg2",
    "postgresql-client",
    "postgresql-client-15",
    "libllvm14",
    "libicu72",
    "libxslt1.1",
]
# Enabled by the baked packages' maintainer scripts (in debootstrap's chroot nothing starts), and
# disabled again: started at every boot with Debian's defaults they would run on every lab host,
# before (or without) their role: nginx's default site would take port 80 from HAProxy, RabbitMQ
# would create its database under the default node name before the role sets its own, epmd and
# Redis would listen on hosts that have no business running them.
BAKED_UNITS_DISABLED = [
    "haproxy.service",
    "keepalived.service",
    "nginx.service",
    "redis-server.service",
    "redis-sentinel.service",
    "rabbitmq-server.service",
    "epmd.socket",
    "epmd.service",
]

IMAGE_RECIPE: dict[str, Any] = {
    "suite": "bookworm",
    "variant": "minbase",
    "packages": [
        "python3",
        "python3-venv",
        "python3-apt",
        "systemd",
        "systemd-sysv",
        "dbus",
        "openssh-server",
        "sudo",
        "iproute2",
        "procps",
        "ca-certificates",
        *BAKED_PACKAGES,
    ],
    "disabled_units": BAKED_UNITS_DISABLED,
    "sources": [
        "deb {mirror} bookworm main",
        "deb {mirror} bookworm-updates main",
        "deb {security} bookworm-security main",
    ],
    # Bumped whenever _configure_rootfs changes what it writes.
    "post_config": 4,
}
MIRROR = os.environ.get("DEPLOYKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get(
    "DEPLOYKIT_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security"
)

# systemd boots as PID 1 with these (measured on the project's Debian 12 machines, where
# --privileged fails: one capability is missing from their bounding set).
_CAPABILITIES = ["SYS_ADMIN", "NET_ADMIN"]
_SECURITY_OPTS = ["seccomp=unconfined", "apparmor=unconfined"]
_TMPFS = {"/run": "", "/run/lock": "", "/tmp": ""}  # noqa: S108 - mount points inside the container

# A unit baked into the image: each container makes its own SSH host keys at first boot, so no
# two lab hosts share a key (the image's keys are deleted when it is built).
_HOSTKEY_UNIT = """\
[Unit]
Description=Generate this host's own SSH host keys (deploykit lab)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
# RabbitMQ's postinst writes the Erlang cookie (the node's shared secret) when the package is
# installed: baked, every lab host would share one. The image has none; each container writes its
# own at first boot, as the postinst does (42 random bytes, base64), before RabbitMQ can start.
_RABBITMQ_COOKIE = "/var/lib/rabbitmq/.erlang.cookie"
_COOKIE_UNIT = f"""\
[Unit]
Description=Generate this host's own Erlang cookie for RabbitMQ (deploykit lab)
Before=rabbitmq-server.service
ConditionPathExists=!{_RABBITMQ_COOKIE}

[Service]
Type=oneshot
UMask=0077
ExecStart=/usr/bin/openssl rand -base64 -out {_RABBITMQ_COOKIE} 42
ExecStart=/bin/chown rabbitmq:rabbitmq {_RABBITMQ_COOKIE}
ExecStart=/bin/chmod 0400 {_RABBITMQ_COOKIE}

[Install]
WantedBy=multi-user.target
"""
_SSHD_CONFIG = """\
# deploykit lab: key-only root login, as on a hardened real server.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
"""


def image_tag() -> str:
    digest = hashlib.sha256(json.dumps(IMAGE_RECIPE, sort_keys=True).encode()).hexdigest()
    return f"{IMAGE_REPOSITORY}:12-{digest[:12]}"


# --- the topology -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPlan:
    """One lab host as planned: its name, inventory groups and fixed address."""

    name: str
    groups: tuple[str, ...]
    address: str


@dataclass(frozen=True)
class LabSpec:
    """What `deploykit lab up` builds. ``app_clones`` None means the profile's default."""

    app_clones: int | None = None
    profile: str = "full"
    subnet: str = DEFAULT_SUBNET
    docstore: str = DEFAULT_LAB_DOCSTORE

    def network(self) -> ipaddress.IPv4Network:
        try:
            net = ipaddress.ip_network(self.subnet)
        except ValueError as error:
            raise BadInput(
                f"--subnet {self.subnet!r}: {error}; give an IPv4 network such as {DEFAULT_SUBNET}"
            ) from None
        if not isinstance(net, ipaddress.IPv4Network) or net.num_addresses < 256:
            raise BadInput(
                f"--subnet {self.subnet!r}: give an IPv4 network of /24 or larger "
                f"such as {DEFAULT_SUBNET}"
            )
        return net

    def hosts(self) -> list[HostPlan]:
        """The hosts, with addresses in fixed blocks so that changing the number of clones never
        renumbers another host: services at .10-.19, app clones from .20 on."""
        if self.docstore not in DOCSTORE_ENGINES:
            raise BadInput(
                f"--docstore {self.docstore!r}: choose one of {', '.join(DOCSTORE_ENGINES)}"
            )
        if self.profile not in PROFILES:
            raise BadInput(f"--profile {self.profile!r}: choose one of {', '.join(PROFILES)}")
        clones = PROFILES[self.profile] if self.app_clones is None else self.app_clones
        if not 1 <= clones <= MAX_APP_CLONES:
            raise BadInput(f"--app-clones {clones}: give a number from 1 to {MAX_APP_CLONES}")
        base = self.network().network_address

        def at(offset: int) -> str:
            return str(base + offset)

        if self.profile == "small":
            # Everything but the balancer and the clones shares one host: roles must not assume
            # they are alone on a host (a small site lists one host under several groups).
            services = [
                HostPlan("lb1", ("lb",), at(10)),
                HostPlan("backend1", ("worker", "cache", "docstore", "queue"), at(11)),
            ]
        else:
            services = [
                HostPlan("lb1", ("lb",), at(10)),
                HostPlan("cache1", ("cache",), at(11)),
                HostPlan("db1", ("docstore",), at(12)),
                HostPlan("queue1", ("queue",), at(13)),
                HostPlan("worker1", ("worker",), at(14)),
            ]
        if self.profile == "ha":
            # No single point of failure: the full profile's hosts keep their addresses, and the
            # second (third) of each tier takes .15-.19 and .5-.9 (the clones stay at .20 on).
            services[1:1] = [HostPlan("lb2", ("lb",), at(15))]
            services += [
                HostPlan("worker2", ("worker",), at(16)),
                HostPlan("cache2", ("cache",), at(17)),
                HostPlan("cache3", ("cache",), at(18)),
                HostPlan("db2", ("docstore",), at(19)),
                HostPlan("queue2", ("queue",), at(5)),
                HostPlan("queue3", ("queue",), at(6)),
            ]
        clones_plan = [HostPlan(f"app{i}", ("app",), at(19 + i)) for i in range(1, clones + 1)]
        balancers = [plan for plan in services if plan.groups == ("lb",)]
        return balancers + clones_plan + [plan for plan in services if plan not in balancers]

    def virtual_address(self) -> str:
        """The balancers' floating address with the network's prefix (ha profile), else ''."""
        if self.profile != "ha":
            return ""
        net = self.network()
        return f"{net.network_address + HA_VIRTUAL_ADDRESS_OFFSET}/{net.prefixlen}"

    def profile_vars(self) -> dict[str, Any]:
        """The group variables a profile sets for every host (the ha profile turns on each
        tier's redundancy)."""
        if self.profile != "ha":
            return {}
        return {
            "keepalived_virtual_address": self.virtual_address(),
            "redis_sentinel": True,
            "rabbitmq_cluster": True,
            "postgresql_replication": self.docstore == "postgresql",
        }


@dataclass
class LabHost:
    """A lab host as it is: what `lab status` shows."""

    name: str
    groups: list[str]
    address: str
    state: str
    ssh_up: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabUpResult:
    hosts: list[LabHost]
    inventory: Path
    image: str
    created: list[str] = field(default_factory=list)
    changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "hosts": [h.to_dict() for h in self.hosts],
            "inventory": str(self.inventory),
            "image": self.image,
            "created": self.created,
            "changed": self.changed,
        }


# --- generated files ----------------------------------------------------------------------------


def inventory_file(root: Path | None = None) -> Path:
    return lab_inventory_dir(root) / "hosts.yml"


def _ssh_dir(root: Path | None) -> Path:
    return lab_inventory_dir(root) / ".ssh"


def ensure_key_pair(ssh_dir: Path) -> tuple[Path, str]:
    """The lab's SSH key pair (ed25519), generated once; returns the private key path and the
    public key line."""
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = ssh_dir / "id_ed25519"
    public = ssh_dir / "id_ed25519.pub"
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        public.write_text(pub.decode() + " deploykit-lab\n")
    return private, public.read_text().strip()


def render_inventory(
    plans: Iterable[HostPlan],
    *,
    private_key: Path,
    known_hosts: Path,
    docstore: str = DEFAULT_LAB_DOCSTORE,
    subnet: str = DEFAULT_SUBNET,
    profile_vars: dict[str, Any] | None = None,
) -> str:
    """inventories/lab/hosts.yml: every host once under all.hosts (its address), and each group
    listing its members, so a host in several groups (the small profile) is defined once. SSH is
    admitted from the lab's network only (the controller reaches it through the bridge's gateway,
    an address of that network), as a site admits it from its admin network."""
    plans = list(plans)
    groups: dict[str, dict[str, dict[str, None]]] = {}
    for plan in plans:
        for group in plan.groups:
            groups.setdefault(group, {"hosts": {}})["hosts"][plan.name] = None
    ssh_args = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    document = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(private_key),
                "ansible_ssh_common_args": ssh_args,
                "deploykit_docstore_engine": docstore,
                "common_firewall_ssh_sources": [str(ipaddress.ip_network(subnet))],
                # Baked pages: HAProxy routes them to nginx beside it (the static role's port).
                "haproxy_static_backend_port": 8081,
                # The balancer checks the shop's liveness path, not its readiness (/healthz, which
                # gates deploys): a docstore outage must not take every clone out at once.
                "haproxy_backend_health_path": "/livez",
                # The shop answers every GET well within 3 s: one in flight on a clone whose host
                # is lost is retried on another clone after 3 s (roles/haproxy).
                "haproxy_timeout_idempotent": "3s",
                **(profile_vars or {}),
            },
            "hosts": {
                p.name: {"ansible_host": p.address, "deploykit_private_address": p.address}
                for p in plans
            },
            "children": dict(sorted(groups.items())),
        }
    }
    header = (
        "# Written by `deploykit lab up`; removed by `deploykit lab down`. Do not edit: it is\n"
        "# rewritten. Real servers: see inventories/production/.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def secrets_file(root: Path | None = None) -> Path:
    return lab_inventory_dir(root) / "group_vars" / "all" / "secrets.yml"


def ensure_lab_secrets(root: Path | None = None) -> tuple[Path, bool]:
    """The lab's secrets, generated once and kept (mode 0600, created so: never readable by others,
    whatever the umask): a value already there is never replaced, so services keep their
    passwords across `lab up` runs."""
    path = secrets_file(root)
    current: dict[str, str] = {}
    if path.exists():
        current = yaml.safe_load(path.read_text()) or {}
    wanted = {name: current.get(name) or make() for name, make in LAB_SECRETS.items()}
    if wanted == current and path.stat().st_mode & 0o7777 == 0o600:
        return path, False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    header = (
        "# The lab's secrets, generated once by `deploykit lab up` and removed by `lab down`.\n"
        "# Root-only: never commit or print them. Production keeps them in an Ansible Vault.\n"
    )
    return path, _write_if_changed(path, header + yaml.safe_dump(wanted, sort_keys=True), 0o600)


def _write_if_changed(path: Path, content: str, mode: int = 0o644) -> bool:
    """Replace ``path`` with ``content`` atomically, the file never readable beyond ``mode``: a
    new temporary file in the same directory is created exclusively with at most 0600 (whatever
    the umask; never a file or link planted under its name), set to exactly ``mode`` before any
    byte is written, synced, then renamed over ``path``."""
    # A file left with another mode (an older deploykit's) is written again with this one.
    if path.exists() and path.stat().st_mode & 0o7777 == mode and path.read_text() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode & 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            # Exactly mode, not mode less the umask (the inventory is 0644 whatever the umask);
            # on the open file, before anything is in it.
            os.fchmod(handle.fileno(), mode)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


# --- the Docker engine --------------------------------------------------------------------------

ENGINE_HINT = (
    "install and start Debian's engine: apt-get install -y docker.io && "
    "(dockerd >/var/log/dockerd.log 2>&1 &)  — or run scripts/ensure-docker-engine"
)


def docker_sdk() -> Any:
    """The Docker SDK (docker, docker.errors, docker.types), imported on first use: the commands
    that do not touch the lab start without it (0.04 s of each one's start, on a quiet machine)."""
    import docker  # noqa: PLC0415
    import docker.errors  # noqa: PLC0415
    import docker.types  # noqa: PLC0415

    return docker


def docker_client() -> Any:
    """A client for a running engine, or a LabError that says how to start one."""
    docker = docker_sdk()
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as error:
        reason = str(error).splitlines()[0][:160]
        raise LabError(f"no Docker engine answers ({reason})", hint=ENGINE_HINT) from None
    return client


# --- the base image -----------------------------------------------------------------------------


def ensure_image(log: Log = print, *, rebuild: bool = False, client: Any = None) -> str:
    """The base image for the current recipe: found, or built offline with debootstrap."""
    client = client or docker_client()
    tag = image_tag()
    if not rebuild:
        try:
            client.images.get(tag)
            _alias(client, tag)
            return tag
        except docker_sdk().errors.ImageNotFound:
            pass
    _check_can_debootstrap()
    log(f"building the lab's base image {tag} offline with debootstrap (about a minute)")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="deploykit-rootfs-", dir="/var/tmp"))
    rootfs = workdir / "rootfs"
    try:
        _debootstrap(rootfs)
        _configure_rootfs(rootfs)
        _import(rootfs, tag)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _alias(client, tag)
    log(f"built {tag} in {time.monotonic() - started:.0f} s")
    return tag


def _alias(client: Any, tag: str) -> None:
    repository, _, version = IMAGE_ALIAS.partition(":")
    image = client.images.get(tag)
    if IMAGE_ALIAS not in image.tags:
        image.tag(repository, version)


def _check_can_debootstrap() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "building the lab's base image needs root (debootstrap creates device nodes and "
            "chroots)",
            hint="run `deploykit lab up` as root, or have root run `deploykit lab image` once",
        )
    if shutil.which("debootstrap") is None:
        raise LabError(
            "debootstrap is not installed; it builds the lab's base image offline",
            hint="apt-get install -y debootstrap",
        )


def _debootstrap(rootfs: Path) -> None:
    command = [
        "debootstrap",
        f"--variant={IMAGE_RECIPE['variant']}",
        "--include=" + ",".join(IMAGE_RECIPE["packages"]),
        IMAGE_RECIPE["suite"],
        str(rootfs),
        MIRROR,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n    ".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise LabError(
            f"debootstrap failed (exit {proc.returncode}):\n    {tail}",
            hint=f"check that {MIRROR} is reachable (set DEPLOYKIT_DEBIAN_MIRROR for a local "
            "mirror) and that /var/tmp has 500 MB free",
        )


def _configure_rootfs(rootfs: Path) -> None:
    """What debootstrap leaves that a fleet of containers must not share, and lab conveniences."""
    sources = "\n".join(IMAGE_RECIPE["sources"]).format(mirror=MIRROR, security=SECURITY_MIRROR)
    (rootfs / "etc/apt/sources.list").write_text(sources + "\n")
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Empty machine-id: systemd makes a fresh one at each container's first boot.
    (rootfs / "etc/machine-id").write_text("")
    dbus_id = rootfs / "var/lib/dbus/machine-id"
    if dbus_id.is_file() or dbus_id.is_symlink():
        dbus_id.unlink()
    units = {"deploykit-ssh-hostkeys.service": _HOSTKEY_UNIT}
    cookie = rootfs / _RABBITMQ_COOKIE.lstrip("/")
    if cookie.parent.is_dir():  # rabbitmq-server is baked
        cookie.unlink(missing_ok=True)
        units["deploykit-rabbitmq-cookie.service"] = _COOKIE_UNIT
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for name, content in units.items():
        (rootfs / "etc/systemd/system" / name).write_text(content)
        link = wants / name
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{name}")
    _disable_units(rootfs, IMAGE_RECIPE["disabled_units"])
    (rootfs / "etc/ssh/sshd_config.d/deploykit-lab.conf").write_text(_SSHD_CONFIG)
    root_ssh = rootfs / "root/.ssh"
    root_ssh.mkdir(mode=0o700, exist_ok=True)
    # apt's lists and archives are rebuilt by the first `apt-get update`; they only bloat the image.
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def _disable_units(rootfs: Path, units: Iterable[str]) -> None:
    """`systemctl disable` offline: remove the links under /etc/systemd/system (its .wants and
    .requires directories, and aliases) that point at one of UNITS."""
    names = set(units)
    for link in (rootfs / "etc/systemd/system").rglob("*"):
        if link.is_symlink() and (link.name in names or Path(os.readlink(link)).name in names):
            link.unlink()


def _import(rootfs: Path, tag: str) -> None:
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
    )
    importer = subprocess.run(
        [
            "docker",
            "import",
            "-c",
            'CMD ["/lib/systemd/systemd"]',
            "-c",
            "ENV container=docker",
            "-c",
            f"LABEL {LABEL}.recipe={tag}",
            "-",
            tag,
        ],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    if tar.stdout is not None:
        tar.stdout.close()
    tar.wait()
    if importer.returncode != 0 or tar.returncode != 0:
        raise LabError(f"docker import of the base image failed: {importer.stderr.strip()}")


# --- network and containers ---------------------------------------------------------------------


def _ensure_network(client: Any, net: ipaddress.IPv4Network, log: Log) -> bool:
    """The lab's bridge network with its fixed subnet; refuses a subnet something else uses."""
    ours = None
    for network in client.networks.list():
        configs = (network.attrs.get("IPAM") or {}).get("Config") or []
        subnets = [c["Subnet"] for c in configs if "Subnet" in c]
        if network.name == NETWORK_NAME:
            ours = (network, subnets)
            continue
        for subnet in subnets:
            other = ipaddress.ip_network(subnet)
            if other.version == 4 and other.overlaps(net):
                raise LabError(
                    f"subnet {net} is already taken: Docker network {network.name!r} uses {subnet}",
                    hint="choose a free one with --subnet (e.g. 172.30.199.0/24)",
                )
    for route in _host_routes():
        if route.overlaps(net) and ours is None:
            raise LabError(
                f"subnet {net} is already taken: the host routes {route} elsewhere",
                hint="choose a free one with --subnet (e.g. 172.30.199.0/24)",
            )
    if ours is not None:
        network, subnets = ours
        if subnets != [str(net)]:
            raise LabError(
                f"the lab network {NETWORK_NAME!r} exists with subnet {', '.join(subnets)}, not "
                f"{net}",
                hint="run `deploykit lab down` first, or pass the same --subnet",
            )
        return False
    log(f"creating network {NETWORK_NAME} ({net})")
    ipam = docker_sdk().types
    client.networks.create(
        NETWORK_NAME,
        driver="bridge",
        ipam=ipam.IPAMConfig(
            pool_configs=[ipam.IPAMPool(subnet=str(net), gateway=str(net.network_address + 1))]
        ),
        labels={LABEL: "1"},
    )
    return True


def _host_routes() -> list[ipaddress.IPv4Network]:
    """IPv4 routes of the host that are not Docker's own bridges (those are checked by name)."""
    proc = subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return []
    routes = []
    for entry in json.loads(proc.stdout or "[]"):
        dst, dev = entry.get("dst", ""), entry.get("dev", "")
        if dst in ("default", "") or dev.startswith(("docker", "br-")):
            continue
        try:
            routes.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue
    return routes


def _container_name(host: str) -> str:
    return CONTAINER_PREFIX + host


def _labels(plan: HostPlan, image: str) -> dict[str, str]:
    return {
        LABEL: "1",
        f"{LABEL}.host": plan.name,
        f"{LABEL}.groups": ",".join(plan.groups),
        f"{LABEL}.address": plan.address,
        f"{LABEL}.image": image,
    }


def _ensure_container(client: Any, plan: HostPlan, image: str, log: Log) -> bool:
    """Create (or start) one host; returns True when something changed."""
    name = _container_name(plan.name)
    try:
        container = client.containers.get(name)
    except docker_sdk().errors.NotFound:
        container = None
    if container is not None:
        if container.labels != {**container.labels, **_labels(plan, image)}:
            log(f"{plan.name}: its image or address changed; recreating it")
            container.remove(force=True)
        elif container.status == "running":
            return False
        else:
            log(f"{plan.name}: starting")
            container.start()
            return True
    log(f"{plan.name}: creating ({plan.address}, {', '.join(plan.groups)})")
    start_systemd_container(
        client,
        name=name,
        hostname=plan.name,
        image=image,
        network=NETWORK_NAME,
        address=plan.address,
        labels=_labels(plan, image),
    )
    return True


def start_systemd_container(
    client: Any,
    *,
    name: str,
    hostname: str,
    image: str,
    network: str,
    address: str,
    labels: dict[str, str],
    restart: bool = True,
) -> None:
    """A lab host: the base image booting systemd as PID 1, with explicit capabilities (no
    --privileged), at a fixed ADDRESS on NETWORK. The molecule scenarios' hosts are made here too
    (molecule/resources/instances.py), so a role is tested on the host the lab runs it on."""
    api = client.api
    host_config = api.create_host_config(
        cap_add=_CAPABILITIES,
        security_opt=_SECURITY_OPTS,
        binds={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
        tmpfs=_TMPFS,
        restart_policy={"Name": "unless-stopped"} if restart else None,
    )
    networking = api.create_networking_config(
        {network: api.create_endpoint_config(ipv4_address=address)}
    )
    created = api.create_container(
        image,
        name=name,
        hostname=hostname,
        detach=True,
        environment={"container": "docker"},
        stop_signal="SIGRTMIN+3",
        labels=labels,
        host_config=host_config,
        networking_config=networking,
    )
    api.start(created["Id"])


def _exec(client: Any, host: str, command: str) -> tuple[int, str]:
    return exec_in(client, _container_name(host), command)


def exec_in(client: Any, container_name: str, command: str) -> tuple[int, str]:
    """COMMAND (sh -c) in a container: its exit code and output."""
    exit_code, output = client.containers.get(container_name).exec_run(["sh", "-c", command])
    return int(exit_code), output.decode(errors="replace").strip()


def wait_booted(client: Any, container_name: str, timeout: float = 90) -> None:
    """Until systemd in the container has booted (running, or degraded), within TIMEOUT."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        _, state = exec_in(client, container_name, "systemctl is-system-running")
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise LabError(
        f"{container_name}: systemd did not finish booting in {timeout:.0f} s (state {state!r})",
        hint=f"docker exec {container_name} systemctl --failed",
    )


def _authorize(client: Any, host: str, public_key: str) -> None:
    line = shlex.quote(public_key)
    rc, output = _exec(
        client,
        host,
        "install -d -m 700 /root/.ssh && "
        f"(grep -qxF {line} /root/.ssh/authorized_keys 2>/dev/null || "
        f"printf '%s\\n' {line} >> /root/.ssh/authorized_keys) && "
        "chmod 600 /root/.ssh/authorized_keys",
    )
    if rc != 0:
        raise LabError(f"{host}: could not install the lab's SSH key: {output}")


def _host_key(client: Any, plan: HostPlan, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, key = _exec(client, plan.name, "cat /etc/ssh/ssh_host_ed25519_key.pub")
        if rc == 0 and key.startswith("ssh-ed25519 "):
            algorithm, blob = key.split()[:2]
            return f"{plan.address} {algorithm} {blob}"
        time.sleep(0.5)
    raise LabError(
        f"{plan.name}: no SSH host key was generated",
        hint=f"docker exec {_container_name(plan.name)} journalctl -u deploykit-ssh-hostkeys",
    )


def ssh_port_open(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    """True when sshd answers with its banner (a bare TCP accept is not enough)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _wait_ssh(plan: HostPlan, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ssh_port_open(plan.address):
            return
        time.sleep(0.5)
    raise LabError(
        f"{plan.name}: sshd does not answer on {plan.address}:22 after {timeout:.0f} s",
        hint=f"docker exec {_container_name(plan.name)} systemctl status ssh",
    )


# --- the verbs ----------------------------------------------------------------------------------


def up(spec: LabSpec, *, root: Path | None = None, log: Log = print) -> LabUpResult:
    """Create the lab (or keep it: a second `up` changes nothing) and write its inventory."""
    plans = spec.hosts()
    net = spec.network()
    client = docker_client()
    image = ensure_image(log, client=client)
    changed = _ensure_network(client, net, log)
    stale = _remove_unplanned(client, {p.name for p in plans}, log)
    created = [p.name for p in plans if _ensure_container(client, p, image, log)]
    changed = changed or bool(created) or bool(stale)

    ssh_dir = _ssh_dir(root)
    private_key, public_key = ensure_key_pair(ssh_dir)
    known_hosts: list[str] = []
    for plan in plans:
        wait_booted(client, _container_name(plan.name))
        _authorize(client, plan.name, public_key)
        known_hosts.append(_host_key(client, plan))
    for plan in plans:
        _wait_ssh(plan)
    known_hosts_file = ssh_dir / "known_hosts"
    changed |= _write_if_changed(known_hosts_file, "\n".join(known_hosts) + "\n", 0o600)
    inventory = inventory_file(root)
    changed |= _write_if_changed(
        inventory,
        render_inventory(
            plans,
            private_key=private_key,
            known_hosts=known_hosts_file,
            docstore=spec.docstore,
            subnet=spec.subnet,
            profile_vars=spec.profile_vars(),
        ),
    )
    changed |= ensure_lab_secrets(root)[1]
    if spec.docstore == "postgresql":
        log(
            "notice: the lab's document store is PostgreSQL (JSONB documents): MongoDB's packages "
            "cannot be downloaded from here. Where they can, use `deploykit lab up --docstore "
            "mongodb`."
        )
    log("lab changed" if changed else "lab unchanged: every host was already up")
    return LabUpResult(
        hosts=status(root=root, client=client),
        inventory=inventory,
        image=image,
        created=created,
        changed=changed,
    )


def _remove_unplanned(client: Any, planned: set[str], log: Log) -> list[str]:
    """Hosts of an earlier, larger lab (e.g. more clones) that the new plan no longer has."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        host = container.labels.get(f"{LABEL}.host", "")
        if host not in planned:
            log(f"{host}: not in the plan any more; removing it")
            container.remove(force=True)
            removed.append(host)
    return removed


def status(*, root: Path | None = None, client: Any = None) -> list[LabHost]:
    """The lab's hosts as Docker and sshd report them (empty when there is no lab)."""
    client = client or docker_client()
    hosts = []
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        labels = container.labels
        address = labels.get(f"{LABEL}.address", "")
        running = container.status == "running"
        hosts.append(
            LabHost(
                name=labels.get(f"{LABEL}.host", container.name),
                groups=[g for g in labels.get(f"{LABEL}.groups", "").split(",") if g],
                address=address,
                state=container.status,
                ssh_up=running and ssh_port_open(address),
            )
        )
    # Hosts without an address (a broken container) sort first.
    return sorted(hosts, key=lambda h: ipaddress.ip_address(h.address or "0.0.0.0"))  # noqa: S104


def down(*, root: Path | None = None, log: Log = print) -> dict[str, list[str]]:
    """Remove the lab's containers, network and generated files; safe when nothing exists.
    The base image stays: it is a cache, rebuilt only when its recipe changes."""
    client = docker_client()
    removed: dict[str, list[str]] = {"containers": [], "networks": [], "files": []}
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        container.remove(force=True)
        removed["containers"].append(container.name)
    try:
        client.networks.get(NETWORK_NAME).remove()
        removed["networks"].append(NETWORK_NAME)
    except docker_sdk().errors.NotFound:
        pass
    # The fact cache describes hosts that no longer exist.
    facts = (root or project_root()) / ".cache" / "facts"
    generated = (inventory_file(root), _ssh_dir(root), secrets_file(root).parent.parent, facts)
    for path in generated:
        if path.is_dir():
            shutil.rmtree(path)
            removed["files"].append(str(path))
        elif path.exists():
            path.unlink()
            removed["files"].append(str(path))
    if any(removed.values()):
        log(
            f"removed {len(removed['containers'])} container(s), "
            f"{len(removed['networks'])} network(s), {len(removed['files'])} generated path(s)"
        )
    else:
        log("nothing to remove: there is no lab")
    return removed
