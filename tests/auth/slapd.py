"""A real OpenLDAP server for tests: Debian's slapd on a free loopback port.

``slapd_server`` (session-scoped) writes a slapd.conf with an mdb database in a
temporary directory, loads a small directory with ``slapadd``, starts slapd in
the foreground, waits until it answers a search, and stops it at the end.
Skipped, with the reason, when slapd is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret"
PEOPLE = f"ou=people,{SUFFIX}"

USERS = {
    # uid: (cn, mail, password)
    "alice": ("Alice Liddell", "alice@example.org", "alice-password"),
    "bob": ("Bob Builder", None, "bob-password"),
}

_SLAPD_PATHS = ("/usr/sbin/slapd", "/usr/local/libexec/slapd")
_SCHEMA_DIR = Path("/etc/ldap/schema")
_MODULE_DIR = Path("/usr/lib/ldap")


@dataclass(frozen=True)
class Slapd:
    url: str
    port: int


def _slapd_binary() -> str | None:
    found = shutil.which("slapd")
    if found:
        return found
    return next((p for p in _SLAPD_PATHS if Path(p).exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ldif() -> str:
    parts = [
        f"dn: {SUFFIX}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\n"
        "o: Example\ndc: example\n",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
    ]
    for uid, (cn, mail, password) in USERS.items():
        entry = (
            f"dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {cn}\n"
            f"sn: {cn.split()[-1]}\nuserPassword: {password}\n"
        )
        if mail:
            entry += f"mail: {mail}\n"
        parts.append(entry)
    return "\n".join(parts)


def _config(tmp: Path) -> str:
    module = f"modulepath {_MODULE_DIR}\nmoduleload back_mdb\n" if (
        _MODULE_DIR / "back_mdb.so"
    ).exists() or (_MODULE_DIR / "back_mdb.la").exists() else ""
    schemas = "".join(
        f"include {_SCHEMA_DIR / name}.schema\n" for name in ("core", "cosine", "inetorgperson")
    )
    return (
        f"{schemas}{module}pidfile {tmp / 'slapd.pid'}\n"
        "access to attrs=userPassword by anonymous auth by self read by * none\n"
        "access to * by * read\n"
        f"database mdb\nmaxsize 10485760\nsuffix \"{SUFFIX}\"\nrootdn \"{ADMIN_DN}\"\n"
        f"rootpw {ADMIN_PASSWORD}\ndirectory {tmp / 'db'}\n"
    )


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    binary = _slapd_binary()
    if binary is None:
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils; .ci/run does)")
    tmp = tmp_path_factory.mktemp("slapd")
    (tmp / "db").mkdir()
    conf = tmp / "slapd.conf"
    conf.write_text(_config(tmp))
    ldif = tmp / "data.ldif"
    ldif.write_text(_ldif())
    slapadd = shutil.which("slapadd") or str(Path(binary).with_name("slapadd"))
    subprocess.run([slapadd, "-f", str(conf), "-l", str(ldif)], check=True,
                   capture_output=True, timeout=30)
    port = _free_port()
    url = f"ldap://127.0.0.1:{port}"
    log = (tmp / "slapd.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-d", "0", "-f", str(conf), "-h", f"{url}/"], stdout=log, stderr=log,
    )
    try:
        deadline = time.monotonic() + 15
        while not _answers(port):
            if proc.poll() is not None:
                raise RuntimeError(f"slapd exited: {(tmp / 'slapd.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("slapd did not answer within 15 s")
            time.sleep(0.05)
        yield Slapd(url=url, port=port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
