"""What the `edgeflux bundle` commands share: consoles, one-line errors, the trust-store
options, passphrases and the hashing progress bar."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from runtime.antirollback import AntiRollbackError
from runtime.bundle import (
    BundleError,
)
from runtime.layout import RobotLayout
from runtime.manifest import ManifestError
from runtime.trust import TrustStore, TrustStoreError

__all__ = [
    "F",
    "err_console",
    "hashing_progress",
    "home_trust_dir",
    "out_console",
    "read_passphrase",
    "trust_options",
    "trust_store",
    "user_errors",
]

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def out_console() -> Console:
    return Console(soft_wrap=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn our own error types into one-line CLI errors (exit 1, no traceback)."""
    try:
        yield
    except (BundleError, TrustStoreError, AntiRollbackError, ManifestError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


def trust_options(f: F) -> F:
    return click.option(
        "--trust-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="EDGEFLUX_TRUST_DIR",
        help="Trust store directory [default: <root>/etc/edgeflux/trust].",
    )(
        click.option(
            "--root",
            type=click.Path(file_okay=False, path_type=Path),
            default="/",
            envvar="EDGEFLUX_ROOT",
            show_default=True,
            help="Robot filesystem root (simulated robots use their own directory).",
        )(f)
    )


def home_trust_dir(home_dir: Path) -> Path:
    """The trust store of a control-plane home (checked: a home, with a trust store)."""
    trust = home_dir / "trust"
    if not (home_dir / "cloud.toml").is_file() or not trust.is_dir():
        raise click.ClickException(
            f"{home_dir} is not a control-plane home (no cloud.toml and trust/); "
            "create one with `edgeflux cloud init`"
        )
    return trust


def trust_store(root: Path, trust_dir: Path | None) -> TrustStore:
    return TrustStore(trust_dir or RobotLayout.at(root).trust)


def read_passphrase(env_name: str | None, prompt: bool, confirm: bool = False) -> bytes | None:
    if env_name:
        value = os.environ.get(env_name)
        if value is None:
            raise click.ClickException(f"environment variable {env_name} is not set")
        return value.encode()
    if prompt:
        text = click.prompt(
            "Passphrase", hide_input=True, confirmation_prompt=confirm, err=True, type=str
        )
        return str(text).encode()
    return None


@contextlib.contextmanager
def hashing_progress(bundle_dir: Path, verb: str) -> Iterator[Callable[[int], None]]:
    """A byte-count progress bar on stderr (only for bundles big enough to wait for)."""
    try:
        total = sum(p.stat().st_size for p in Path(bundle_dir).rglob("*") if p.is_file())
    except OSError:
        total = 0
    if total < 64 << 20 or not err_console.is_terminal:
        yield lambda n: None
        return
    columns = (
        TextColumn(f"{verb} {bundle_dir}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(verb, total=total)
        yield lambda n: bar.advance(task, n)
