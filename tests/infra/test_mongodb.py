"""Testinfra checks of the mongodb role, run by the molecule scenario ``mongodb``.

The scenario has three hosts, each in a different inventory group:

* ``mongo-db1`` (docstore): the replica set's only member;
* ``mongo-app`` (app): a client group, admitted to mongo-db1:27017;
* ``mongo-other`` (cache): not admitted.

MongoDB's packages come from repo.mongodb.org, which lab machines may not reach. The scenario's
prepare step asks once and records the answer on mongo-db1; the checks follow the same path:

* always: mongod.conf parsed as YAML and checked against MongoDB's documented options, the key
  file, the account, the directories, the apt source line, the firewall declaration, and the
  firewall proved from the outside (a stand-in listens on 27017 when mongod cannot be installed);
* only where MongoDB was installed: mongod running and bound where it should be, the replica set,
  authentication and the two users proved from the client host, data surviving a restart. Where
  it was not, these 10 are skipped, and the skip reason says what was skipped and why; they are
  the skips tests/e2e/verify_skips.py allows (ALLOWED_SKIPS), and `make test`'s summary lists them.
  A skip of any other test fails the scenario.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from lab_probes import ipv4, knock, only_in_scenario, role_defaults, scenario_hosts

SCENARIO = "mongodb"

pytestmark = only_in_scenario(SCENARIO)

ROOT = Path(__file__).resolve().parents[2]
ROLE_DEFAULTS = role_defaults("mongodb")

DB, CLIENT, OTHER = "mongo-db1", "mongo-app", "mongo-other"
PORT = ROLE_DEFAULTS["mongodb_port"]
VERSION = ROLE_DEFAULTS["mongodb_version"]
SERIES = ".".join(VERSION.split(".")[:2])
CONFIG = "/etc/mongod.conf"
KEYFILE = "/etc/mongod.keyfile"
MODE_FILE = "/etc/ansible/facts.d/molecule_mongodb.fact"
NOTICE = "MongoDB packages unreachable here: skipped install, service start, replica set and users"

# --- MongoDB's documented configuration file options ----------------------------------------------
# https://www.mongodb.com/docs/v7.0/reference/configuration-options/ : the sections, and for each
# the options it may hold (None: any value; a set: the documented values). Options removed from
# 7.0 are listed apart: mongod refuses to start with them.
ANY = None
DOCUMENTED: dict[str, dict[str, set[str] | None]] = {
    "systemLog": {
        "verbosity": ANY,
        "quiet": ANY,
        "traceAllExceptions": ANY,
        "syslogFacility": ANY,
        "path": ANY,
        "logAppend": ANY,
        "logRotate": {"rename", "reopen"},
        "destination": {"file", "syslog"},
        "timeStampFormat": {"iso8601-utc", "iso8601-local"},
        "component": ANY,
    },
    "processManagement": {"fork": ANY, "pidFilePath": ANY, "timeZoneInfo": ANY},
    "cloud": {"monitoring": ANY},
    "net": {
        "port": ANY,
        "bindIp": ANY,
        "bindIpAll": ANY,
        "maxIncomingConnections": ANY,
        "wireObjectCheck": ANY,
        "ipv6": ANY,
        "unixDomainSocket": ANY,
        "tls": ANY,
        "compression": ANY,
    },
    "security": {
        "keyFile": ANY,
        "clusterAuthMode": {"keyFile", "sendKeyFile", "sendX509", "x509"},
        "authorization": {"enabled", "disabled"},
        "transitionToAuth": ANY,
        "javascriptEnabled": ANY,
        "redactClientLogData": ANY,
        "clusterIpSourceAllowlist": ANY,
        "sasl": ANY,
        "enableEncryption": ANY,
        "encryptionCipherMode": ANY,
        "encryptionKeyFile": ANY,
        "kmip": ANY,
        "ldap": ANY,
    },
    "setParameter": ANY,
    "storage": {
        "dbPath": ANY,
        "journal": ANY,
        "directoryPerDB": ANY,
        "syncPeriodSecs": ANY,
        "engine": {"wiredTiger", "inMemory"},
        "wiredTiger": ANY,
        "inMemory": ANY,
        "oplogMinRetentionHours": ANY,
    },
    "operationProfiling": {
        "mode": {"off", "slowOp", "all"},
        "slowOpThresholdMs": ANY,
        "slowOpSampleRate": ANY,
        "filter": ANY,
    },
    "replication": {
        "oplogSizeMB": ANY,
        "replSetName": ANY,
        "enableMajorityReadConcern": ANY,
    },
    "sharding": {"clusterRole": {"configsvr", "shardsvr"}, "archiveMovedChunks": ANY},
    "auditLog": ANY,
}
# Options MongoDB 7.0 no longer accepts: mongod refuses to start with them.
REMOVED = {
    "storage.journal.enabled": "removed in MongoDB 6.1 (journaling is always on)",
    "net.ssl": "replaced by net.tls in MongoDB 4.2",
    "storage.mmapv1": "the MMAPv1 engine was removed in MongoDB 4.2",
}


# Runs on the client host with pymongo: one operation, the outcome as JSON.
CLIENT_SCRIPT = """
import json, os, sys
import pymongo
from pymongo.errors import OperationFailure
uri, action = os.environ["MONGO_URI"], sys.argv[1]
client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=15000)
try:
    if action == "hello":
        out = client.admin.command("hello")
        out = {k: out.get(k) for k in ("setName", "isWritablePrimary", "hosts", "primary")}
    elif action == "list_databases":
        out = {"names": client.list_database_names()}
    elif action == "write":
        db, key = sys.argv[2], sys.argv[3]
        coll = client[db].get_collection(
            "molecule", write_concern=pymongo.write_concern.WriteConcern(w="majority", j=True))
        coll.replace_one({"_id": key}, {"_id": key, "value": key}, upsert=True)
        out = {"written": key}
    elif action == "read":
        db, key = sys.argv[2], sys.argv[3]
        out = {"doc": client[db].molecule.find_one({"_id": key})}
    print(json.dumps({"ok": True, **out}))
except OperationFailure as error:
    print(json.dumps({"ok": False, "code": error.code, "error": str(error)}))
"""


@pytest.fixture(scope="module")
def lab(request):
    """The scenario's hosts by name, from molecule's inventory."""
    return scenario_hosts(request, DB, CLIENT, OTHER)


@pytest.fixture(scope="module")
def db_address(lab) -> str:
    return ipv4(lab[DB])


@pytest.fixture(scope="module")
def mode(lab) -> dict:
    """The path prepare.yml chose: {"repository_reachable": bool, "reason": str}."""
    return json.loads(lab[DB].file(MODE_FILE).content_string)


@pytest.fixture(scope="module")
def installed(lab) -> bool:
    return lab[DB].file("/usr/bin/mongod").exists


@pytest.fixture(scope="module")
def running(installed, mode) -> None:
    """Skip, saying what and why, where MongoDB could not be installed."""
    if not installed:
        pytest.skip(f"{NOTICE}: {mode['reason']}")


@pytest.fixture(scope="module")
def config(lab) -> dict:
    content = lab[DB].file(CONFIG).content_string
    parsed = yaml.safe_load(content)
    assert isinstance(parsed, dict), f"{CONFIG} is not a YAML mapping"
    return parsed


@pytest.fixture(scope="module")
def secrets(lab) -> dict:
    variables = lab[DB].ansible.get_variables()
    return {
        name: variables[name]
        for name in ("mongodb_replica_set_key", "mongodb_admin_password", "mongodb_app_password")
    }


# --- always: what the role writes before (and without) the install -------------------------------


def test_the_path_taken_is_said(mode, installed):
    # The scenario's path and what verify found agree: installed exactly when reachable.
    assert mode["repository_reachable"] == installed, mode
    if not installed:
        print(f"\nNOTICE: {NOTICE}: {mode['reason']}.")


def test_config_is_managed_and_yaml(lab, config):
    content = lab[DB].file(CONFIG).content_string
    assert content.startswith("#"), "mongod.conf must begin with the ansible_managed comment"
    assert "Ansible managed" in "".join(content.splitlines()[:3])
    assert config


def test_config_uses_only_documented_options(config):
    unknown = []
    for section, options in config.items():
        if section not in DOCUMENTED:
            unknown.append(section)
            continue
        documented = DOCUMENTED[section]
        if documented is ANY:
            continue
        assert isinstance(options, dict), f"{section} must be a mapping"
        for option, value in options.items():
            if option not in documented:
                unknown.append(f"{section}.{option}")
            elif documented[option] is not ANY:
                assert value in documented[option], (
                    f"{section}.{option}: {value!r} is not one of {sorted(documented[option])}"
                )
    assert unknown == [], f"options MongoDB does not document: {unknown}"


def test_config_has_no_removed_options(config):
    def flatten(node: dict, prefix: str = "") -> set[str]:
        paths = set()
        for key, value in node.items():
            paths.add(prefix + key)
            if isinstance(value, dict):
                paths |= flatten(value, prefix + key + ".")
        return paths

    present = flatten(config) & set(REMOVED)
    assert not present, {path: REMOVED[path] for path in present}
    assert config.get("storage", {}).get("engine", "wiredTiger") != "mmapv1"


def test_config_values(config, db_address):
    assert config["net"]["port"] == PORT
    bind = [a.strip() for a in str(config["net"]["bindIp"]).split(",")]
    assert bind == [db_address, "127.0.0.1"]
    assert "0.0.0.0" not in bind and "::" not in bind and "*" not in bind
    assert not config["net"].get("bindIpAll", False)
    assert config["security"]["authorization"] == "enabled"
    assert config["security"]["keyFile"] == KEYFILE
    assert config["replication"]["replSetName"] == ROLE_DEFAULTS["mongodb_replica_set_name"]
    assert config["storage"]["dbPath"] == ROLE_DEFAULTS["mongodb_db_path"]
    assert config["systemLog"]["destination"] == "file"
    assert config["systemLog"]["path"] == ROLE_DEFAULTS["mongodb_log_path"]
    # systemd runs mongod in the foreground: forking would make it lose track of the process.
    assert not config.get("processManagement", {}).get("fork", False)


def test_keyfile_is_the_secret_readable_by_mongodb_only(lab, secrets):
    keyfile = lab[DB].file(KEYFILE)
    assert keyfile.exists
    assert keyfile.user == "mongodb"
    assert keyfile.group == "mongodb"
    assert keyfile.mode == 0o400
    content = "".join(keyfile.content_string.split())
    assert content == "".join(secrets["mongodb_replica_set_key"].split())
    assert re.fullmatch(r"[A-Za-z0-9+/=]{6,1024}", content)


def test_mongodb_account_is_a_system_account(lab):
    user = lab[DB].user("mongodb")
    assert user.exists
    assert user.group == "mongodb"
    assert user.uid < 1000
    assert user.home == "/var/lib/mongodb"
    assert user.shell == "/usr/sbin/nologin"


def test_data_and_log_directories(lab):
    log_dir = str(Path(ROLE_DEFAULTS["mongodb_log_path"]).parent)
    for path in (ROLE_DEFAULTS["mongodb_db_path"], log_dir):
        directory = lab[DB].file(path)
        assert directory.is_directory, path
        assert directory.user == "mongodb", path
        assert directory.mode == 0o750, path


def test_pymongo_is_installed_for_the_modules(lab):
    assert lab[DB].package("python3-pymongo").is_installed


def test_apt_source_line(lab, installed):
    # Installed from the repository: the live source. Otherwise the role's template rendered by
    # converge with the role's values (the role writes the source only when it installs from it).
    live = f"/etc/apt/sources.list.d/mongodb-org-{SERIES}.list"
    path = live if installed else "/root/molecule-mongodb-org.list"
    host = lab[DB]
    content = host.file(path).content_string
    keyring = f"/etc/apt/keyrings/mongodb-server-{SERIES}.asc"
    line = (
        f"deb [arch=amd64 signed-by={keyring}] https://repo.mongodb.org/apt/debian "
        f"bookworm/mongodb-org/{SERIES} main"
    )
    assert content.startswith("#")
    assert [x for x in content.splitlines() if x and not x.startswith("#")] == [line]
    # apt itself parses the line into the repository's index address (nothing is downloaded).
    result = host.run(
        "apt-get update --print-uris -o Dir::Etc::SourceList=%s -o Dir::Etc::SourceParts=/dev/null",
        path,
    )
    assert result.rc == 0, result.stderr
    index = f"https://repo.mongodb.org/apt/debian/dists/bookworm/mongodb-org/{SERIES}/"
    assert index in result.stdout
    if installed:
        assert host.file(keyring).exists


def test_firewall_declaration_admits_clients_and_members(lab):
    content = lab[DB].file("/etc/nftables.d/mongodb.nft").content_string
    client, member, other = ipv4(lab[CLIENT]), ipv4(lab[DB]), ipv4(lab[OTHER])
    assert content.startswith("#")
    assert f"ip saddr {{ {client} }} tcp dport {{ {PORT} }} accept" in content
    assert f"ip saddr {{ {member} }} tcp dport {{ {PORT} }} accept" in content
    assert other not in content
    ruleset = lab[DB].run("nft list chain inet deploykit input").stdout
    assert '"mongodb/mongodb-clients"' in ruleset
    assert '"mongodb/mongodb-members"' in ruleset


def test_client_group_reaches_the_port(lab, db_address):
    # mongod, or the stand-in listener where MongoDB could not be installed: the same firewall.
    assert knock(lab[CLIENT], db_address, PORT) == "open"


def test_other_group_is_dropped(lab, db_address):
    assert knock(lab[OTHER], db_address, PORT) == "timeout"


def test_port_27017_is_mongod_or_the_stand_in_as_the_path_says(lab, installed):
    # Installed: mongod listens, and no stand-in. Not installed: the stand-in, and nothing
    # pretends to be mongod. (Either way this runs: no skip.)
    listening = {
        "mongod": lab[DB].service("mongod").is_running,
        "stand-in": lab[DB].service("molecule-mongodb-standin").is_running,
    }
    assert listening == {"mongod": installed, "stand-in": not installed}, listening


# --- only where MongoDB was installed ------------------------------------------------------------


def client_call(lab, uri: str, *args: str) -> dict:
    result = lab[CLIENT].run(
        "MONGO_URI=%s python3 -c %s " + " ".join(["%s"] * len(args)), uri, CLIENT_SCRIPT, *args
    )
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def uri(db_address: str, user: str = "", password: str = "", auth_db: str = "admin") -> str:
    name = ROLE_DEFAULTS["mongodb_replica_set_name"]
    credentials = f"{user}:{password}@" if user else ""
    auth = f"&authSource={auth_db}" if user else ""
    return f"mongodb://{credentials}{db_address}:{PORT}/?replicaSet={name}{auth}"


def app_uri(db_address: str, secrets: dict) -> str:
    user, database = ROLE_DEFAULTS["mongodb_app_user"], ROLE_DEFAULTS["mongodb_app_database"]
    return uri(db_address, user, secrets["mongodb_app_password"], database)


@pytest.mark.usefixtures("running")
def test_mongod_is_running_and_enabled(lab):
    service = lab[DB].service("mongod")
    assert service.is_running
    assert service.is_enabled


@pytest.mark.usefixtures("running")
def test_mongod_parses_its_configuration(lab):
    result = lab[DB].run("/usr/bin/mongod --config %s --outputConfig", CONFIG)
    assert result.rc == 0, result.stderr


@pytest.mark.usefixtures("running")
def test_mongod_listens_on_the_private_address_and_loopback_only(lab, db_address):
    sockets = {s for s in lab[DB].socket.get_listening_sockets() if s.endswith(f":{PORT}")}
    assert sockets == {f"tcp://{db_address}:{PORT}", f"tcp://127.0.0.1:{PORT}"}


@pytest.mark.usefixtures("running")
def test_packages_are_pinned_and_held(lab):
    held = set(lab[DB].run("apt-mark showhold").stdout.split())
    for package in ROLE_DEFAULTS["mongodb_packages"]:
        assert lab[DB].package(package).version == VERSION, package
        assert package in held, package
    for package in ROLE_DEFAULTS["mongodb_shell_packages"]:
        assert package in held, package


@pytest.mark.usefixtures("running")
def test_replica_set_has_a_writable_primary(lab, db_address):
    hello = client_call(lab, uri(db_address), "hello")
    assert hello["setName"] == ROLE_DEFAULTS["mongodb_replica_set_name"]
    assert hello["isWritablePrimary"] is True
    assert hello["hosts"] == [f"{db_address}:{PORT}"]


@pytest.mark.usefixtures("running")
def test_anonymous_client_is_refused(lab, db_address):
    outcome = client_call(lab, uri(db_address), "list_databases")
    assert outcome["ok"] is False
    assert outcome["code"] == 13, outcome  # Unauthorized


@pytest.mark.usefixtures("running")
def test_wrong_password_is_refused(lab, db_address):
    app_db = ROLE_DEFAULTS["mongodb_app_database"]
    bad = uri(db_address, ROLE_DEFAULTS["mongodb_app_user"], "not-the-password", app_db)
    outcome = client_call(lab, bad, "write", app_db, "refused")
    assert outcome["ok"] is False
    assert outcome["code"] == 18, outcome  # AuthenticationFailed


@pytest.mark.usefixtures("running")
def test_admin_logs_in(lab, db_address, secrets):
    admin = uri(db_address, ROLE_DEFAULTS["mongodb_admin_user"], secrets["mongodb_admin_password"])
    outcome = client_call(lab, admin, "list_databases")
    assert outcome["ok"] is True
    assert "admin" in outcome["names"]


@pytest.mark.usefixtures("running")
def test_app_user_writes_its_database_only(lab, db_address, secrets):
    app_db = ROLE_DEFAULTS["mongodb_app_database"]
    app = app_uri(db_address, secrets)
    assert client_call(lab, app, "write", app_db, "clone-check")["ok"] is True
    assert client_call(lab, app, "read", app_db, "clone-check")["doc"]["value"] == "clone-check"
    elsewhere = client_call(lab, app, "write", "not_the_app_db", "x")
    assert elsewhere["ok"] is False
    assert elsewhere["code"] == 13, elsewhere  # Unauthorized


@pytest.mark.usefixtures("running")
def test_data_survives_a_restart(lab, db_address, secrets):
    app_db = ROLE_DEFAULTS["mongodb_app_database"]
    app = app_uri(db_address, secrets)
    key = f"restart-{os.getpid()}"
    assert client_call(lab, app, "write", app_db, key)["ok"] is True
    db = lab[DB]
    assert db.run("systemctl restart mongod.service").rc == 0
    waited = db.run(
        "python3 -c %s %s",
        "import socket, sys, time\n"
        "started = time.monotonic()\n"
        "while True:\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close(); break\n"
        "    except OSError:\n"
        "        if time.monotonic() - started > 60:\n"
        "            sys.exit('mongod does not accept connections %.0f s after its restart'"
        " % (time.monotonic() - started))\n"
        "        time.sleep(1)\n",
        str(PORT),
    )
    assert waited.rc == 0, waited.stderr
    # The client waits (server selection) until the member is primary again.
    assert client_call(lab, app, "read", app_db, key)["doc"]["value"] == key
