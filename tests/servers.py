"""Real servers for integration tests: each on a free loopback port, started and stopped
by the suite, waited on by condition (never by fixed sleeps).

A test that needs a server that is not installed is skipped with the reason, unless
``EDGEFLUX_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where the skip becomes a failure so
CI never passes by skipping.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_SERVICES = os.environ.get("EDGEFLUX_REQUIRE_SERVICES") == "1"


def missing_service(reason: str) -> None:
    """Skip (locally) or fail (in CI) because a required server is unavailable."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll `condition` with a short back-off until it holds or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _find_binary(name: str, extra_dirs: list[str]) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        candidate = Path(d) / name
        if candidate.exists():
            return str(candidate)
    return None


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    datadir: Path

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a fresh database and return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _pg_bindir() -> str | None:
    initdb = _find_binary("initdb", sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin"))))
    return str(Path(initdb).resolve().parent) if initdb else None


@contextlib.contextmanager
def run_postgres() -> Iterator[Postgres]:
    """Start a throw-away PostgreSQL cluster on a free port (as `postgres` when root)."""
    bindir = _pg_bindir()
    if bindir is None:
        missing_service("PostgreSQL server binaries (initdb) not installed")
        raise AssertionError("unreachable")
    run_as: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            missing_service("running as root and no 'postgres' user exists for initdb")
        run_as = ["runuser", "-u", "postgres", "--"]
    tmp = Path(tempfile.mkdtemp(prefix="edgeflux-pg-"))
    datadir, sockdir = tmp / "data", tmp / "sock"
    sockdir.mkdir()
    if owner is not None:
        for p in (tmp, sockdir):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    port = free_port()
    user = "edgeflux"
    subprocess.run(
        [
            *run_as,
            f"{bindir}/initdb",
            "-D",
            str(datadir),
            "-U",
            user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    log = tmp / "postgres.log"
    proc = subprocess.Popen(
        [
            *run_as,
            f"{bindir}/postgres",
            "-D",
            str(datadir),
            "-p",
            str(port),
            "-k",
            str(sockdir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 30, "PostgreSQL to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited at start:\n{log.read_text(errors='replace')}")
        pg = Postgres("127.0.0.1", port, user, datadir)
        import psycopg

        def ready() -> bool:
            try:
                with psycopg.connect(host=pg.host, port=port, user=user, dbname="postgres"):
                    return True
            except psycopg.OperationalError:
                return False

        wait_until(ready, 30, "PostgreSQL to accept connections")
        yield pg
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- Mosquitto


@dataclass
class Mosquitto:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    config: Path
    log: Path

    def stop(self) -> None:
        _stop(self.proc)

    def restart(self) -> None:
        """Start again on the same port with the same configuration."""
        self.stop()
        self.proc = _spawn_mosquitto(self.config, self.log)
        wait_until(lambda: port_open(self.port), 15, "Mosquitto to listen again")


def mosquitto_binary() -> str | None:
    return _find_binary("mosquitto", ["/usr/sbin", "/usr/local/sbin"])


def _spawn_mosquitto(config: Path, log: Path) -> subprocess.Popen[bytes]:
    binary = mosquitto_binary()
    assert binary is not None
    return subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )


@contextlib.contextmanager
def run_mosquitto(config_text: str | None = None, port: int | None = None) -> Iterator[Mosquitto]:
    """Start Mosquitto on a free port. `config_text` may use `{port}` and `{dir}`."""
    if mosquitto_binary() is None:
        missing_service("mosquitto is not installed (Debian package 'mosquitto')")
    tmp = Path(tempfile.mkdtemp(prefix="edgeflux-mosq-"))
    port = port or free_port()
    text = config_text or "listener {port} 127.0.0.1\nallow_anonymous true\n"
    text = text.replace("{port}", str(port)).replace("{dir}", str(tmp))
    if "persistence" not in text:
        text += "persistence false\n"
    if os.geteuid() == 0 and "\nuser " not in f"\n{text}":
        text += "user root\n"
    config = tmp / "mosquitto.conf"
    config.write_text(text)
    log = tmp / "mosquitto.log"
    proc = _spawn_mosquitto(config, log)
    broker = Mosquitto("127.0.0.1", port, proc, config, log)
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 15, "Mosquitto to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"Mosquitto exited at start:\n{log.read_text(errors='replace')}")
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- OpenSSH


@dataclass
class Sshd:
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path


@contextlib.contextmanager
def run_sshd() -> Iterator[Sshd]:
    """Start OpenSSH's sshd on a free loopback port with throwaway host and user keys.

    Logs in as the current user with a key only; nothing outside a temporary directory
    is touched except `/run/sshd` (privilege separation), created when missing.
    """
    sshd = _find_binary("sshd", ["/usr/sbin"])
    keygen = shutil.which("ssh-keygen")
    if sshd is None or keygen is None or shutil.which("ssh") is None:
        missing_service("OpenSSH server/client not installed (Debian 'openssh-server')")
        raise AssertionError("unreachable")
    tmp = Path(tempfile.mkdtemp(prefix="edgeflux-sshd-"))
    tmp.chmod(0o700)
    for name in ("host", "client"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)],
            check=True,
            capture_output=True,
        )
    (tmp / "authorized_keys").write_bytes((tmp / "client.pub").read_bytes())
    (tmp / "authorized_keys").chmod(0o600)
    port = free_port()
    user = pwd.getpwuid(os.geteuid()).pw_name
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host'}\n"
        f"PidFile {tmp / 'sshd.pid'}\nAuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\n"
        "UsePAM no\nAllowUsers " + user + "\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    known = tmp / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} " + (tmp / "host.pub").read_text())
    log = tmp / "sshd.log"
    proc = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log.open("wb")
    )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 15, "sshd to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited at start:\n{log.read_text(errors='replace')}")
        yield Sshd("127.0.0.1", port, user, tmp / "client", known)
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- Ray


@dataclass
class RayCluster:
    host: str
    port: int  # the head's Ray client server
    start_s: float  # from the first `ray start` until every node is alive

    @property
    def address(self) -> str:
        return f"ray://{self.host}:{self.port}"


def _in_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def _stop_group(pgid: int) -> None:
    # The head's gcs_server and monitor outlive SIGTERM for long: a short grace, then KILL.
    for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        if not _in_group(pgid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not _in_group(pgid), timeout_s=wait_s, what="ray to stop")


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> int:
    """`ray start ARGS` in a process group of its own, which its node's processes keep."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_bin is None:
        raise RuntimeError("ray imports but the `ray` command is missing")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [ray_bin, "start", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        code = None
    if code != 0:
        _stop_group(proc.pid)
        raise RuntimeError(f"ray start exited with {code}:\n{log.read_text()[-3000:]}")
    return proc.pid


@contextlib.contextmanager
def run_ray_cluster(
    nodes: int = 2, cpus_per_node: int = 1, env: dict[str, str] | None = None
) -> Iterator[RayCluster]:
    """A Ray cluster on loopback: a head and `nodes - 1` worker nodes (`ray start`), each
    with its own short temporary directory; its workers import this checkout. Stopped
    by process group (only the processes started here), then the directories removed."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        missing_service("ray is not installed (pip install 'edgeflux[ray]')")
    import ray

    root = Path(__file__).resolve().parents[1]
    base = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # socket paths ≤ 107 bytes
    path = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    node_env = {**os.environ, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    gcs, client = free_port(), free_port()
    common = ["--num-cpus", str(cpus_per_node), "--node-ip-address", "127.0.0.1",
              "--disable-usage-stats", "--object-store-memory", str(100 * 2**20)]  # fmt: skip
    groups: list[int] = []
    t0 = time.monotonic()
    try:
        head = ["--head", "--port", str(gcs), "--ray-client-server-port", str(client),
                "--include-dashboard=false", "--temp-dir", str(base / "n0"), *common]  # fmt: skip
        groups.append(_ray_start(head, node_env, base / "n0.log"))
        for i in range(1, nodes):
            worker = ["--address", f"127.0.0.1:{gcs}", "--temp-dir", str(base / f"n{i}"), *common]
            groups.append(_ray_start(worker, node_env, base / f"n{i}.log"))
        cluster = RayCluster("127.0.0.1", client, 0.0)
        # The head's client server can refuse the first session while its node is still
        # coming up ("Starting Ray client server failed"): try again until it answers.
        deadline = time.monotonic() + 60
        while True:
            try:
                ray.init(cluster.address, logging_level="WARNING", log_to_driver=False)
                break
            except ConnectionError:
                ray.shutdown()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            wait_until(
                lambda: sum(bool(n["Alive"]) for n in ray.nodes()) == nodes,
                timeout_s=60,
                what=f"{nodes} Ray nodes",
            )
        finally:
            ray.shutdown()
        cluster.start_s = time.monotonic() - t0
        yield cluster
    finally:
        for g in reversed(groups):
            _stop_group(g)
        shutil.rmtree(base, ignore_errors=True)
