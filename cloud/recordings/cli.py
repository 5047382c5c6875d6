"""`edgeflux cloud recordings ...`: flight recordings robots uploaded, as training data.

Usage::

    edgeflux cloud recordings list --home ./plane [--device robot-1] [--json]
    edgeflux cloud recordings get robot-1 seg-<start_ns>.keep.mcap --out x.mcap --home ./plane
    edgeflux cloud recordings export ./plane/recordings/robot-1 --npz robot-1.npz
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cloud._cli_common import home_option, load_home, open_store

__all__ = ["recordings"]


@click.group(name="recordings")
def recordings() -> None:
    """Flight recordings (MCAP segments from robots' runtimes)."""


@recordings.command("export")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--npz",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the episodes here (edgeflux.replay/v1, what distillation trains from).",
)
@click.option("--env-id", default="", help="Dataset label (default recording:<bundle>).")
@click.option("--min-steps", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export_cmd(
    sources: tuple[Path, ...], out: Path, env_id: str, min_steps: int, as_json: bool
) -> None:
    """Export MCAP segments (files, or directories of them) as an episode dataset."""
    from cloud.recordings.export import ExportError, segment_paths, to_replay

    try:
        paths = segment_paths(sources)
        buffer = to_replay(paths, env_id=env_id, min_steps=min_steps)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    digest = buffer.save(out)
    summary = {
        "npz": str(out),
        "segments": len(paths),
        "episodes": buffer.num_episodes,
        "steps": len(buffer),
        "obs_dim": buffer.obs_dim,
        "act_dim": buffer.act_dim,
        "dataset_digest": digest,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"{out}: {summary['episodes']} episodes, {summary['steps']} steps from "
            f"{len(paths)} segments (obs {buffer.obs_dim}, action {buffer.act_dim}), {digest}"
        )


@recordings.command("list")
@home_option
@click.option("--device", "device_id", default=None, help="Only this device's segments.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(home_dir: Path, device_id: str | None, limit: int, as_json: bool) -> None:
    """Segments robots uploaded to this plane, newest first."""
    from cloud.store import StoreError
    from cloud.store.recordings import RecordingStore

    store = open_store(load_home(home_dir))
    try:
        rows = RecordingStore(store.engine).list(device_id, limit=limit)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    data = [
        {
            "device_id": r.device_id,
            "name": r.name,
            "start_ns": r.start_ns,
            "kept": r.kept,
            "size": r.size,
            "sha256": r.sha256,
            "uploaded_at": r.uploaded_at.isoformat(),
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(data))
        return
    for r in data:
        mark = " kept" if r["kept"] else ""
        click.echo(f"{r['device_id']:<20} {r['name']:<36} {r['size']:>10} B{mark}")
    if not data:
        click.echo("no recordings uploaded yet")


@recordings.command("get")
@home_option
@click.argument("device_id")
@click.argument("name")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Write it here."
)
def get_cmd(home_dir: Path, device_id: str, name: str, out: Path) -> None:
    """Copy one uploaded segment out of the trajectory store (checksum verified)."""
    import hashlib

    from cloud.recordings.service import NAME, recordings_dir
    from cloud.store.recordings import RecordingStore
    from runtime.atomicio import atomic_writer

    if not NAME.match(name) or "/" in device_id or device_id in ("", ".", ".."):
        raise click.BadParameter(f"no segment {device_id}/{name}", param_hint="NAME")
    home = load_home(home_dir)
    store = open_store(home)
    try:
        rec = RecordingStore(store.engine).get(device_id, name)
    finally:
        store.close()
    if rec is None:
        raise click.ClickException(f"no uploaded segment {name} of device {device_id!r}")
    data = (recordings_dir(home.root) / device_id / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != rec.sha256:
        raise click.ClickException(f"{name}: the stored file does not match its indexed sha256")
    with atomic_writer(out) as fh:
        fh.write(data)
    click.echo(f"{out}: {name} of {device_id}, {len(data)} bytes, sha256 {rec.sha256}")
