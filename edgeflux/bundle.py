"""`edgeflux bundle ...`: create, sign, verify, inspect and pack model bundles.

Usage::

    edgeflux bundle keygen --private keys/signing.pem --public keys/signing.pub
    edgeflux bundle create --onnx policy.onnx --name pendulum --version 1.0.0 \\
        --sequence 1 --spec pendulum.toml --out out/pendulum-1.0.0
    edgeflux bundle sign out/pendulum-1.0.0 --key keys/signing.pem
    edgeflux bundle trust add keys/signing.pub --trust-dir ./trust
    edgeflux bundle verify out/pendulum-1.0.0 --trust-dir ./trust
    edgeflux bundle pack out/pendulum-1.0.0 --out pendulum-1.0.0.efb
    edgeflux bundle inspect pendulum-1.0.0.efb --json

A spec TOML holds any manifest table (`[io]`, `[control]`, `[compatibility]`,
`[provenance]`); the I/O tensors default to the graph's, flags win over the file.
User mistakes end with one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from runtime.antirollback import AntiRollbackError, AntiRollbackStore
from runtime.bundle import (
    BundleError,
    DeviceProfile,
    create_bundle,
    generate_signing_key,
    io_spec_from_onnx,
    pack_bundle,
    sign_bundle,
    unpack_bundle,
    verify_bundle,
)
from runtime.bundle._files import hash_open_file, open_regular, walk_bundle
from runtime.bundle._oms import SIGNATURE_NAME, OmsFormatError, parse_sigstore_bundle
from runtime.bundle.archive import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_TOTAL_BYTES
from runtime.bundle.compat import check_compatibility
from runtime.layout import RobotLayout
from runtime.manifest import MANIFEST_NAME, BundleManifest, ManifestError, parse_manifest
from runtime.trust import ROLES, TrustStore, TrustStoreError

__all__ = ["bundle"]

F = TypeVar("F", bound=Callable[..., Any])
_err = Console(stderr=True)


def _out() -> Console:
    return Console(soft_wrap=True)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn our own error types into one-line CLI errors (exit 1, no traceback)."""
    try:
        yield
    except (BundleError, TrustStoreError, AntiRollbackError, ManifestError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


def _trust_option(f: F) -> F:
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


def _home_trust(home_dir: Path) -> Path:
    """The trust store of a control-plane home (checked: a home, with a trust store)."""
    trust = home_dir / "trust"
    if not (home_dir / "cloud.toml").is_file() or not trust.is_dir():
        raise click.ClickException(
            f"{home_dir} is not a control-plane home (no cloud.toml and trust/); "
            "create one with `edgeflux cloud init`"
        )
    return trust


def _trust(root: Path, trust_dir: Path | None) -> TrustStore:
    return TrustStore(trust_dir or RobotLayout.at(root).trust)


def _passphrase(env_name: str | None, prompt: bool, confirm: bool = False) -> bytes | None:
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
def _hashing(bundle_dir: Path, verb: str) -> Iterator[Callable[[int], None]]:
    """A byte-count progress bar on stderr (only for bundles big enough to wait for)."""
    try:
        total = sum(p.stat().st_size for p in Path(bundle_dir).rglob("*") if p.is_file())
    except OSError:
        total = 0
    if total < 64 << 20 or not _err.is_terminal:
        yield lambda n: None
        return
    columns = (
        TextColumn(f"{verb} {bundle_dir}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=_err, transient=True) as bar:
        task = bar.add_task(verb, total=total)
        yield lambda n: bar.advance(task, n)


@click.group(name="bundle")
def bundle() -> None:
    """Create, sign, verify, inspect and pack model bundles.

    \b
    edgeflux bundle keygen --private k.pem --public k.pub
    edgeflux bundle create --onnx policy.onnx --name pendulum --version 1.0.0 \\
        --spec pendulum.toml --out pendulum-1.0.0
    edgeflux bundle sign pendulum-1.0.0 --key k.pem
    edgeflux bundle trust add k.pub --trust-dir ./trust
    edgeflux bundle verify pendulum-1.0.0 --trust-dir ./trust
    edgeflux bundle pack pendulum-1.0.0 --out pendulum-1.0.0.efb
    """


# --------------------------------------------------------------------- create


def _floats(text: str | None, n: int, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None
    if len(values) == 1 and n > 1:
        values = values * n
    if len(values) != n:
        raise click.BadParameter(f"needs 1 or {n} values, got {len(values)}", param_hint=flag)
    return values


def _last_dim(shape: list[int | str]) -> int | None:
    return shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None


def _check_spec_keys(spec: Path, data: dict[str, Any]) -> None:
    """Refuse a key the manifest does not know (a typo would otherwise be carried along
    silently: manifests keep unknown fields for forward compatibility)."""
    tables = {
        name: field.annotation
        for name, field in BundleManifest.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }
    top = {"name", "version", "sequence", *tables}
    unknown = [k for k in data if k not in top]
    for table, model in tables.items():
        body = data.get(table)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise click.ClickException(f"{spec}: `{table}` must be a table ([{table}])")
        unknown += [f"{table}.{k}" for k in body if k not in model.model_fields]
    if unknown:
        raise click.ClickException(
            f"{spec}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(see docs/bundle-spec.md)"
        )


_DEFAULT_FALLBACK = "zero"
"""What a tick that misses its deadline writes when neither flags nor --spec say: the
same default `distill` packages with (a zero action, not the last one held)."""


@bundle.command()
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), help="The ONNX policy.")
@click.option("--name", help="Bundle name (a-z 0-9 . _ -) [or `name` in --spec].")
@click.option("--version", "version", help="Semver, e.g. 1.2.0 [or `version` in --spec].")
@click.option("--sequence", type=int, help="Anti-rollback sequence [default: from spec, or 1].")
@click.option(
    "--spec",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Manifest TOML (docs/bundle-spec.md; template: examples/bundle-spec.toml).",
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="The bundle directory.")
@click.option("--obs-low", help="Observation lower bounds: one value or one per element.")
@click.option("--obs-high", help="Observation upper bounds.")
@click.option("--obs-mean", help="Normaliser: observation mean (one value or one per element).")
@click.option("--obs-std", help="Normaliser: observation standard deviation (> 0).")
@click.option("--action-low", help="Action lower bounds.")
@click.option("--action-high", help="Action upper bounds.")
@click.option("--rate-hz", type=float, help="Control rate in Hz.")
@click.option("--deadline-ms", type=float, help="Per-tick inference deadline in ms.")
@click.option(
    "--fallback",
    type=click.Choice(["hold", "zero", "safe"]),
    help=f"What a missed tick writes [default: from spec, or {_DEFAULT_FALLBACK}].",
)
@click.option(
    "--safe-action", help="The action the 'safe' fallback writes (one value per element)."
)
@click.option("--max-action-delta", type=float, help="Largest per-tick change of any action.")
@click.option(
    "--allow-op", multiple=True, help="Allow a custom-domain op, as domain:OpType or domain:*."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def create(
    onnx_path: Path | None,
    name: str | None,
    version: str | None,
    sequence: int | None,
    spec: Path | None,
    out_dir: Path | None,
    obs_low: str | None,
    obs_high: str | None,
    obs_mean: str | None,
    obs_std: str | None,
    action_low: str | None,
    action_high: str | None,
    rate_hz: float | None,
    deadline_ms: float | None,
    fallback: str | None,
    safe_action: str | None,
    max_action_delta: float | None,
    allow_op: tuple[str, ...],
    as_json: bool,
) -> None:
    """Make a bundle directory from an ONNX policy.

    The I/O tensors are read from the graph; bounds, normaliser, rate, deadline and
    fallback come from flags or a manifest TOML (--spec), flags winning. Every missing
    setting is reported at once; a spec that contradicts the graph is refused and
    nothing is written.
    """
    with _user_errors():
        data: dict[str, Any] = {}
        if spec is not None:
            try:
                data = tomllib.loads(spec.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise click.ClickException(f"{spec}: cannot read the spec TOML ({exc})") from exc
            _check_spec_keys(spec, data)
        missing: list[str] = []
        if onnx_path is None:
            missing.append("--onnx")
        if out_dir is None:
            missing.append("--out")
        for key, value in (("name", name), ("version", version)):
            if value is not None:
                data[key] = value
            elif key not in data:
                missing.append(f"--{key} (or `{key}` in --spec)")
        io = data.setdefault("io", {})
        obs_n = act_n = None
        if onnx_path is not None:
            inputs, outputs = io_spec_from_onnx(onnx_path)
            io.setdefault("inputs", [t.model_dump() for t in inputs])
            io.setdefault("outputs", [t.model_dump() for t in outputs])
            obs_n = _last_dim(inputs[0].shape) if len(inputs) == 1 else None
            act_n = _last_dim(outputs[0].shape) if len(outputs) == 1 else None
        for key, text, n, required in (
            ("obs_low", obs_low, obs_n, True),
            ("obs_high", obs_high, obs_n, True),
            ("obs_mean", obs_mean, obs_n, False),
            ("obs_std", obs_std, obs_n, False),
            ("action_low", action_low, act_n, True),
            ("action_high", action_high, act_n, True),
        ):
            flag = f"--{key.replace('_', '-')}"
            if text is not None:
                if n is None and onnx_path is not None:
                    raise click.ClickException(
                        f"{flag}: the graph has no single fixed-size "
                        f"{'input' if key.startswith('obs') else 'output'}; put io.{key} in --spec"
                    )
                if n is not None:
                    io[key] = _floats(text, n, flag)
            elif required and key not in io:
                missing.append(f"{flag} (or io.{key} in --spec)")
        control = data.setdefault("control", {})
        for key, setting in (("rate_hz", rate_hz), ("deadline_ms", deadline_ms)):
            if setting is not None:
                control[key] = setting
            elif key not in control:
                missing.append(f"--{key.replace('_', '-')} (or control.{key} in --spec)")
        if missing:
            raise click.ClickException(
                f"bundle create needs {len(missing)} more setting"
                f"{'s' if len(missing) > 1 else ''}: {', '.join(missing)}; nothing was written"
            )
        assert onnx_path is not None and out_dir is not None
        if fallback is not None:
            control["fallback"] = fallback
        control.setdefault("fallback", _DEFAULT_FALLBACK)
        if max_action_delta is not None:
            control["max_action_delta"] = max_action_delta
        if safe_action is not None:
            n = act_n if act_n is not None else len(io.get("action_low", []))
            control["safe_action"] = _floats(safe_action, n, "--safe-action")
        data["schema"] = "edgeflux.bundle/v1"
        if sequence is not None:
            data["sequence"] = sequence
        data.setdefault("sequence", 1)
        try:
            manifest = BundleManifest.model_validate(data)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise click.ClickException(f"the manifest is invalid: {details}") from None
        out = create_bundle(onnx_path, manifest, out_dir, allowed_custom_ops=allow_op)
    m = manifest
    if as_json:
        click.echo(json.dumps({"bundle": str(out), "name": m.name, "version": m.version}))
    else:
        _err.print(
            f"created [bold]{out}[/] ({m.name} {m.version}); next: edgeflux bundle sign {out}"
        )


# --------------------------------------------------------------------- keys / sign


@bundle.command()
@click.option("--private", "private_path", required=True, type=click.Path(path_type=Path))
@click.option("--public", "public_path", required=True, type=click.Path(path_type=Path))
@click.option("--encrypt", is_flag=True, help="Ask for a passphrase to encrypt the private key.")
@click.option("--passphrase-env", help="Read the passphrase from this environment variable.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keygen(
    private_path: Path,
    public_path: Path,
    encrypt: bool,
    passphrase_env: str | None,
    as_json: bool,
) -> None:
    """Generate an ECDSA P-256 signing key pair (private key mode 0600)."""
    with _user_errors():
        passphrase = _passphrase(passphrase_env, encrypt, confirm=True)
        kid = generate_signing_key(private_path, public_path, passphrase)
    if as_json:
        click.echo(
            json.dumps({"key_id": kid, "private": str(private_path), "public": str(public_path)})
        )
    else:
        click.echo(f"key id {kid}")
        _err.print(f"private key {private_path} (0600), public key {public_path}")


@bundle.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path))
@click.option("--passphrase-env", help="Read the key's passphrase from this environment variable.")
@click.option("--ask-passphrase", is_flag=True, help="Prompt for the key's passphrase.")
def sign(
    bundle_dir: Path, key_path: Path, passphrase_env: str | None, ask_passphrase: bool
) -> None:
    """Sign every file of a bundle into model.sig (OMS v1.0, key mode)."""
    with _user_errors():
        passphrase = _passphrase(passphrase_env, ask_passphrase)
        with _hashing(bundle_dir, "signing") as advance:
            out = sign_bundle(bundle_dir, key_path, passphrase, progress=advance)
    _err.print(f"signed: {out}")


# --------------------------------------------------------------------- verify / inspect


@contextlib.contextmanager
def _as_directory(target: Path, max_bytes: int | None = None) -> Iterator[Path]:
    """A bundle directory for `target`: itself, or a temporary unpack of an .efb file."""
    if not target.exists():
        raise click.ClickException(
            f"{target}: no such bundle (expected a bundle directory or a .efb file)"
        )
    if target.is_dir():
        yield target
        return
    if target.suffix != ".efb":
        raise click.ClickException(
            f"{target} is a plain file, not a bundle: give the bundle directory (holding "
            "policy.onnx, edgeflux.json, model.sig) or a .efb file from `bundle pack`"
        )
    tmp = Path(tempfile.mkdtemp(prefix="edgeflux-efb-"))
    try:
        yield unpack_bundle(
            target, tmp / "bundle", max_total_bytes=max_bytes or DEFAULT_MAX_TOTAL_BYTES
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@bundle.command()
@click.argument("target", type=click.Path(path_type=Path))
@_trust_option
@click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Control-plane home: verify against its trust store (instead of --trust-dir).",
)
@click.option(
    "--counters",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Anti-rollback counter file [default: none, or <root>'s with --device].",
)
@click.option(
    "--device/--no-device",
    default=False,
    help="Also check compatibility with this machine (and <root>'s counters).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(
    target: Path,
    root: Path,
    trust_dir: Path | None,
    home_dir: Path | None,
    counters: Path | None,
    device: bool,
    as_json: bool,
) -> None:
    """Verify a bundle directory or .efb.

    Checks, in order: signature by a trusted key, the exact file set, every digest,
    the manifest, the ONNX graph, and with --device this machine's compatibility and
    the anti-rollback counter (read only). Exit 0 only if everything holds.
    """
    if home_dir is not None:
        if trust_dir is not None:
            raise click.UsageError("give --home or --trust-dir, not both")
        trust_dir = _home_trust(home_dir)
    with _user_errors():
        trust = _trust(root, trust_dir)
        if counters is None and device:
            counters = RobotLayout.at(root).antirollback
        store = AntiRollbackStore(counters) if counters else None
        profile = DeviceProfile.local() if device else None
        try:
            with _as_directory(target) as bdir, _hashing(bdir, "verifying") as advance:
                verified = verify_bundle(
                    bdir, trust, counters=store, device=profile, progress=advance
                )
        except BundleError as exc:
            if as_json:
                # Scripts reading --json get the refusal as data too (and exit 1).
                failure = {
                    "ok": False,
                    "bundle": str(target),
                    "error": type(exc).__name__,
                    "reason": exc.reason,
                    "message": str(exc),
                }
                click.echo(json.dumps(failure))
                raise SystemExit(1) from exc
            raise
    m = verified.manifest
    result = {
        "ok": True,
        "bundle": str(target),
        "name": m.name,
        "version": m.version,
        "sequence": m.sequence,
        "signer_key_id": verified.signer_key_id,
        "root_digest": verified.root_digest,
        "policy_sha256": verified.policy_sha256,
        "files": verified.files,
        "checked": ["signature", "file_set", "digests", "manifest", "onnx"]
        + (["compatibility"] if profile else [])
        + (["anti_rollback"] if store else []),
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"OK {m.name} {m.version} (sequence {m.sequence}) signed by "
            f"{verified.signer_key_id[:16]}…, root digest {verified.root_digest[:16]}…"
        )


def _inspect_dir(bdir: Path, trust: TrustStore | None) -> dict[str, Any]:
    files, _ = walk_bundle(bdir)
    digests: dict[str, str] = {}
    for name in files:
        with open_regular(bdir / name, str(bdir)) as fh:
            digests[name], _data = hash_open_file(fh)
    report: dict[str, Any] = {"files": digests}
    sig_path = bdir / SIGNATURE_NAME
    if sig_path.is_file():
        try:
            sb = parse_sigstore_bundle(sig_path.read_bytes())
            report["signer_key_id"] = sb.key_hint or None
        except OmsFormatError as exc:
            report["signature_error"] = str(exc)
    else:
        report["signer_key_id"] = None
    if MANIFEST_NAME not in digests:
        raise ManifestError(f"{bdir / MANIFEST_NAME}: missing; is {bdir} a bundle?")
    manifest = parse_manifest((bdir / MANIFEST_NAME).read_bytes(), str(bdir / MANIFEST_NAME))
    report["manifest"] = json.loads(manifest.to_json())
    profile = DeviceProfile.local()
    try:
        check_compatibility(manifest, profile, str(bdir))
        report["compatible_here"] = True
    except BundleError as exc:
        report["compatible_here"] = False
        report["incompatibility"] = str(exc)
    if trust is not None:
        try:
            verify_bundle(bdir, trust)
            report["verified"] = True
        except BundleError as exc:
            report["verified"] = False
            report["verify_error"] = f"{type(exc).__name__}: {exc}"
    return report


@bundle.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--trust-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also verify against this trust store.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def inspect(target: Path, trust_dir: Path | None, as_json: bool) -> None:
    """Show manifest, signer, digests, I/O spec, compatibility.

    TARGET is a bundle directory or an .efb. The signer key id shown is the one the
    signature claims; pass --trust-dir to also verify it.
    """
    with _user_errors(), _as_directory(target) as bdir:
        report = _inspect_dir(bdir, TrustStore(trust_dir) if trust_dir else None)
    report["bundle"] = str(target)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    m = report["manifest"]
    out = _out()
    summary = Table(title=f"bundle {target}", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value")
    summary.add_row("name", m["name"])
    summary.add_row("version", m["version"])
    summary.add_row("sequence", str(m["sequence"]))
    summary.add_row("created", str(m.get("created_at", "")))
    summary.add_row("signer key id (claimed)", report.get("signer_key_id") or "unsigned")
    if "verified" in report:
        summary.add_row("verified", "yes" if report["verified"] else report["verify_error"])
    c = m["compatibility"]
    summary.add_row("min runtime", c["min_runtime_version"])
    summary.add_row("opset", str(c["opset"]))
    summary.add_row("providers", ", ".join(c["execution_providers"]))
    summary.add_row("hardware tags", ", ".join(c["hardware_tags"]) or "-")
    summary.add_row(
        "compatible here",
        "yes" if report["compatible_here"] else f"no: {report.get('incompatibility')}",
    )
    ctl = m["control"]
    summary.add_row(
        "control",
        f"{ctl['rate_hz']} Hz, deadline {ctl['deadline_ms']} ms, fallback {ctl['fallback']}",
    )
    out.print(summary)
    io = Table(title="I/O spec")
    for col in ("direction", "name", "shape", "dtype"):
        io.add_column(col)
    for direction in ("inputs", "outputs"):
        for t in m["io"][direction]:
            io.add_row(direction[:-1], t["name"], str(t["shape"]), t["dtype"])
    out.print(io)
    files = Table(title="files")
    files.add_column("file")
    files.add_column("sha256")
    for name, digest in report["files"].items():
        files.add_row(name, digest)
    out.print(files)


# --------------------------------------------------------------------- pack / unpack


@bundle.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_efb", required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pack(bundle_dir: Path, out_efb: Path, as_json: bool) -> None:
    """Pack a signed bundle into one .efb (deterministic tar)."""
    with _user_errors():
        out = pack_bundle(bundle_dir, out_efb)
    h = hashlib.sha256()
    with out.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    info = {"efb": str(out), "length": out.stat().st_size, "sha256": h.hexdigest()}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"{out} {info['length']} bytes sha256 {info['sha256']}")


@bundle.command()
@click.argument("efb", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--max-members", type=int, default=DEFAULT_MAX_MEMBERS, show_default=True)
@click.option("--max-bytes", type=int, default=DEFAULT_MAX_TOTAL_BYTES, show_default=True)
def unpack(efb: Path, out_dir: Path, max_members: int, max_bytes: int) -> None:
    """Unpack an .efb into a new directory (verify it afterwards)."""
    with _user_errors():
        out = unpack_bundle(efb, out_dir, max_members=max_members, max_total_bytes=max_bytes)
    _err.print(f"unpacked into {out}; next: edgeflux bundle verify {out}")


# --------------------------------------------------------------------- trust


@bundle.group(name="trust")
def trust_group() -> None:
    """Manage the trusted public keys (roles: models, attestation)."""


_role = click.option("--role", type=click.Choice(ROLES), default="models", show_default=True)


@trust_group.command("list")
@_trust_option
@click.option("--role", type=click.Choice(ROLES), help="Only this role [default: all].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def trust_list(root: Path, trust_dir: Path | None, role: str | None, as_json: bool) -> None:
    """List trusted key ids."""
    with _user_errors():
        store = _trust(root, trust_dir)
        roles = [role] if role else list(ROLES)
        rows = [(r, kid) for r in roles for kid in store.list(r)]
    if as_json:
        click.echo(json.dumps([{"role": r, "key_id": k} for r, k in rows]))
        return
    table = Table(title=f"trusted keys in {store.directory}")
    table.add_column("role")
    table.add_column("key id")
    for r, k in rows:
        table.add_row(r, k)
    _out().print(table)


@trust_group.command("add")
@click.argument("public_key", type=click.Path(dir_okay=False, path_type=Path))
@_trust_option
@_role
def trust_add(public_key: Path, root: Path, trust_dir: Path | None, role: str) -> None:
    """Trust a public key (PEM) for a role; prints its key id."""
    with _user_errors():
        try:
            pem = public_key.read_bytes()
        except OSError as exc:
            raise click.ClickException(f"{public_key}: cannot read ({exc.strerror})") from exc
        kid = _trust(root, trust_dir).add(role, pem)
    click.echo(kid)


@trust_group.command("remove")
@click.argument("key_id")
@_trust_option
@_role
def trust_remove(key_id: str, root: Path, trust_dir: Path | None, role: str) -> None:
    """Stop trusting a key (full id, or a unique prefix of 8+ chars)."""
    with _user_errors():
        store = _trust(root, trust_dir)
        kid = store.resolve(role, key_id)
        store.remove(role, kid)
    _err.print(f"removed {kid} from role {role}")
