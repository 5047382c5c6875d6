"""`edgeflux demo`: the whole pipeline on one machine, on embedded defaults.

Usage::

    edgeflux demo --exit --json demo/summary.json

Each stage runs only if the component it needs has been built; stages that are not
built yet are listed as such in the summary, and never reported as done.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click


@dataclass
class StageResult:
    name: str
    status: str  # "done" | "failed" | "not built"
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DemoSummary:
    stages: list[StageResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.stages)


# The stages of the full demo (issue "the main job end to end"), in order.
PLANNED_STAGES = [
    ("cloud up", "control plane"),
    ("distil policy v1", "cloud trainers"),
    ("parity attestation", "parity attestation"),
    ("publish + flash 3 robots", "flash"),
    ("live telemetry", "fleet agent"),
    ("push v2 to the fleet", "fleet agent"),
    ("broken bundle rolls back", "fleet agent"),
    ("fetch attestation over gRPC", "parity attestation"),
]


def run_demo(workdir: Path) -> DemoSummary:
    summary = DemoSummary()
    for name, issue in PLANNED_STAGES:
        summary.stages.append(StageResult(name, "not built", f"arrives with the {issue} issue"))
    return summary


@click.command("demo")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Where the demo keeps its control plane and robots.",
)
@click.option("--exit", "exit_after", is_flag=True, help="Stop everything when done.")
@click.option("--fresh", is_flag=True, help="Delete the demo directory first.")
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a machine-readable summary here.",
)
def demo(workdir: Path, exit_after: bool, fresh: bool, json_out: Path | None) -> None:
    """Run the whole pipeline end to end on this machine."""
    start = time.monotonic()
    summary = run_demo(workdir)
    click.echo("EdgeFlux demo")
    for stage in summary.stages:
        mark = {"done": "✔", "failed": "✘", "not built": "·"}[stage.status]
        click.echo(f"  {mark} {stage.name:<30} {stage.status:<10} {stage.detail}")
    built = sum(s.status == "done" for s in summary.stages)
    click.echo(
        f"{built}/{len(summary.stages)} stages ran in {time.monotonic() - start:.1f}s; "
        "stages marked '·' are not built yet."
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(
            json.dumps({"ok": summary.ok, "stages": [asdict(s) for s in summary.stages]}, indent=2)
        )
    if not summary.ok:
        sys.exit(1)
