"""`edgeflux cloud recordings ...`: flight recordings as training data."""

from __future__ import annotations

import json
from pathlib import Path

import click

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
