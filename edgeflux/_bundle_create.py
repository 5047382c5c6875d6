"""`edgeflux bundle create`: a bundle from an ONNX policy and a spec (flags win)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError

from edgeflux._bundle_common import (
    err_console,
    user_errors,
)
from runtime.bundle import (
    create_bundle,
    io_spec_from_onnx,
)
from runtime.manifest import BundleManifest

__all__ = ["create"]


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


@click.command()
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
    with user_errors():
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
        err_console.print(
            f"created [bold]{out}[/] ({m.name} {m.version}); next: edgeflux bundle sign {out}"
        )
