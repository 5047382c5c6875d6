"""Where a campaign's work units run: a local process pool (the default) or a Ray cluster.

An executor takes work units (plain JSON data, see `cloud.attest.units`) and yields each
unit's result as it finishes, in any order; the campaign saves every result as it
arrives, so a run stopped at any point resumes with the same results. Both executors run
the same `run_unit` on the same data, so the same seeds give the same numbers.

``--executor`` names one (`parse_executor`):

- ``local``: a spawn process pool of ``workers`` processes on this machine;
- ``ray://HOST:PORT``: the Ray client server of a running cluster (``ray start --head``
  listens on port 10001). Files a unit reads (the signed ONNX graph, a reference bundle's
  graph, a world-model checkpoint) are shipped once through Ray's object store, so the
  cluster's machines need no shared disk; each node needs the same EdgeFlux, Ray and
  Python versions as the machine that starts the campaign. A unit whose worker dies
  is retried on a fresh worker (`RayExecutor.max_retries`), then named in the error.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import multiprocessing
import re
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from copy import deepcopy
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from cloud.attest.spec import CampaignError
from cloud.attest.units import FILE_FIELDS, run_unit

__all__ = [
    "DEFAULT_EXECUTOR",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "RayExecutor",
    "parse_executor",
]

DEFAULT_EXECUTOR = "local"
RAY_INSTALL = "pip install 'edgeflux[ray]'"
Unit = dict[str, Any]


class ExecutorError(CampaignError):
    """An executor that cannot be used as given (one-line reason)."""


class Executor(Protocol):
    """Runs work units; `run` yields each unit's result as it finishes."""

    label: str

    def run(self, units: Sequence[Unit]) -> Iterator[Unit]: ...

    def __enter__(self) -> Executor: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


_ADDRESS = re.compile(r"ray://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                      r":(?P<port>[0-9]{1,5})")  # fmt: skip


def parse_executor(text: str, workers: int, *, name: str = "--executor") -> Executor:
    """``local`` or ``ray://HOST:PORT``; ExecutorError says what was expected (of the
    option or setting `name`)."""
    if text == "local":
        return LocalExecutor(workers)
    if not text.startswith("ray://"):
        raise ExecutorError(f"{name} {text!r}: expected 'local' or 'ray://HOST:PORT'")
    m = _ADDRESS.fullmatch(text)
    if m is None:
        raise ExecutorError(
            f"{name} {text!r}: expected ray://HOST:PORT (the cluster's Ray client server, "
            "e.g. ray://head.example:10001)"
        )
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise ExecutorError(f"{name} {text!r}: port {port} is not in 1..65535")
    if importlib.util.find_spec("ray") is None:
        raise ExecutorError(f"{name} {text}: Ray is not installed; {RAY_INSTALL}")
    return RayExecutor(m["host"].strip("[]"), port)


# ----------------------------------------------------------------------------- local


class LocalExecutor:
    """A spawn process pool on this machine (in this process for one worker or one unit)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.label = "local"

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, units: Sequence[Unit]) -> Iterator[Unit]:
        if self.workers <= 1 or len(units) <= 1:
            for u in units:
                yield run_unit(u)
            return
        # spawn, not fork: torch and onnxruntime thread pools do not survive a fork.
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(units)), mp_context=ctx)
        pending: dict[Future[Unit], str] = {pool.submit(run_unit, u): u["id"] for u in units}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    unit_id = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        raise CampaignError(
                            "a worker process died while running one of the units "
                            f"{_some([unit_id, *pending.values()])}; finished units are saved, "
                            "rerun to resume"
                        ) from None
                    yield result
        except BaseException:
            # Ctrl-C, a failed unit or a closed generator: drop queued units at once.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def _some(ids: Sequence[str]) -> str:
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    return ", ".join(ids[:3]) + more


# ----------------------------------------------------------------------------- ray


def _get(unit: Unit, field: tuple[str, ...]) -> Any:
    node: Any = unit
    for key in field:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _set(unit: Unit, field: tuple[str, ...], value: str) -> None:
    node = unit
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value


def _pack(path: Path) -> dict[str, Any]:
    """A file or a directory's files as bytes, to rebuild on a machine without this disk."""
    if path.is_file():
        return {"name": path.name, "dir": False, "files": {path.name: path.read_bytes()}}
    if path.is_dir():
        files = {
            p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
        return {"name": path.name, "dir": True, "files": files}
    raise CampaignError(f"{path}: a work unit reads it, but it is neither a file nor a directory")


def _unpack(pack: Mapping[str, Any], into: Path) -> str:
    root = into / pack["name"]
    (root if pack["dir"] else into).mkdir(parents=True, exist_ok=True)
    for rel, data in pack["files"].items():
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise CampaignError(f"shipped file {rel!r}: not a relative path inside its directory")
        dest = root / rel if pack["dir"] else into / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return str(root)


def _edgeflux_version() -> str:
    """The installed EdgeFlux distribution's version, as every node reports it."""
    try:
        return importlib.metadata.version("edgeflux")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_shipped(
    unit: Unit, fields: list[list[str]], version: str, *packs: Mapping[str, Any]
) -> Unit:
    """A unit on a Ray worker: its files rebuilt in a temporary directory, then `run_unit`."""
    __version__ = _edgeflux_version()
    if version != __version__:
        raise CampaignError(
            f"work unit {unit['id']}: this node runs EdgeFlux {__version__}, the campaign was "
            f"started with {version}; install the same version on every node"
        )
    if not fields:
        return run_unit(unit)
    local = deepcopy(unit)
    with tempfile.TemporaryDirectory(prefix="edgeflux-unit-") as tmp:
        for i, (field, pack) in enumerate(zip(fields, packs, strict=True)):
            _set(local, tuple(field), _unpack(pack, Path(tmp) / str(i)))
        return run_unit(local)


class RayExecutor:
    """Units as Ray tasks (one CPU each) on the cluster behind a Ray client address."""

    def __init__(
        self, host: str, port: int, *, max_retries: int = 2, max_in_flight: int | None = None
    ) -> None:
        self.host, self.port = host, port
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.label = f"ray://{host}:{port}" if ":" not in host else f"ray://[{host}]:{port}"
        self._connected = False
        self._shipped: dict[str, Any] = {}  # path -> ObjectRef of its packed contents

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False
            self._shipped.clear()

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError:
            raise ExecutorError(
                f"--executor {self.label}: Ray is not installed; {RAY_INSTALL}"
            ) from None
        if self._connected:
            return ray
        # A quick look first: ray.init spends half a minute retrying a dead address.
        try:
            socket.create_connection((self.host, self.port), timeout=10).close()
        except OSError as exc:
            raise ExecutorError(
                f"{self.label}: no Ray client server answers ({exc.strerror or exc}); start the "
                "cluster with `ray start --head` (its client server listens on port 10001)"
            ) from None
        import logging

        try:
            ray.init(self.label, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise ExecutorError(f"{self.label}: cannot join the Ray cluster: {exc}") from None
        self._connected = True
        return ray

    def _ship(self, ray: Any, unit: Unit) -> tuple[list[list[str]], list[Any]]:
        fields, refs = [], []
        for field in FILE_FIELDS:
            path = _get(unit, field)
            if path is None:
                continue
            if path not in self._shipped:
                self._shipped[path] = ray.put(_pack(Path(path)))
            fields.append(list(field))
            refs.append(self._shipped[path])
        return fields, refs

    def _lost(self, unit_id: str, exc: Exception) -> str:
        from ray.exceptions import NodeDiedError, ObjectLostError, WorkerCrashedError

        lines = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
        if isinstance(exc, WorkerCrashedError | NodeDiedError | ObjectLostError):
            tries = self.max_retries + 1
            what = f"its Ray worker died ({tries} tr{'ies' if tries > 1 else 'y'}; {why})"
        else:
            what = f"Ray could not run it ({why})"
        return f"work unit {unit_id}: {what}; finished units are saved, rerun to resume"

    def run(self, units: Sequence[Unit]) -> Iterator[Unit]:
        if not units:
            return
        ray = self._connect()
        from ray.exceptions import RayError, RayTaskError

        __version__ = _edgeflux_version()
        task = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(
            run_shipped
        )
        # Enough queued to keep every CPU busy (an autoscaler sees the backlog), few enough
        # that each wait stays cheap in a campaign of thousands of units.
        window = self.max_in_flight or max(64, 4 * int(ray.cluster_resources().get("CPU", 1)))
        queue = list(units)
        pending: dict[Any, str] = {}
        try:
            while queue or pending:
                while queue and len(pending) < window:
                    u = queue.pop(0)
                    fields, refs = self._ship(ray, u)
                    pending[task.remote(u, fields, __version__, *refs)] = u["id"]
                finished, _ = ray.wait(list(pending), num_returns=1)
                for ref in finished:
                    unit_id = pending.pop(ref)
                    try:
                        result: Unit = ray.get(ref)
                    except RayTaskError as exc:
                        # The unit itself failed (a CampaignError naming it, an environment
                        # it cannot build): the same exception as in a local worker.
                        raise exc.cause from None
                    except RayError as exc:
                        raise CampaignError(self._lost(unit_id, exc)) from None
                    yield result
        finally:
            for ref in pending:
                ray.cancel(ref)
