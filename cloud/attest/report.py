"""A readable report of a parity attestation, and a PNG of the paired differences.

Works from the statement alone (the predicate carries every per-task return), so
``edgeflux attest show`` can explain an attestation fetched from anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_differences", "render_text"]


def _fmt(x: Any, spec: str = ".4g") -> str:
    return "—" if x is None else format(x, spec)


def render_text(statement: dict[str, Any], *, verified_by: str | None = None) -> str:
    """Plain-text report (no colour codes): verdict, subjects, per-task table, gates."""
    p = statement.get("predicate", {})
    lines: list[str] = []
    verdict = str(p.get("verdict", "?")).upper()
    bundle = p.get("bundle", {})
    lines.append(
        f"Parity attestation: {verdict} — {bundle.get('name', '?')} {bundle.get('version', '')}"
    )
    lines.append(
        "signature: "
        + (f"verified (key {verified_by[:16]})" if verified_by else "NOT verified (no --trust)")
    )
    for s in statement.get("subject", []):
        lines.append(f"subject  {s.get('name')}: sha256 {s.get('digest', {}).get('sha256')}")
    lines.append(f"issued   {p.get('issued_at')}   expires {p.get('expires_at')}")
    campaign = p.get("campaign", {})
    proto = p.get("protocol", {})
    lines.append(
        f"campaign {campaign.get('name', '?')} (sha256 {str(campaign.get('digest', ''))[:16]}…), "
        f"alpha {proto.get('alpha')}, teacher {_teacher(p.get('teacher', {}))}"
    )
    lines.append("")
    header = (
        f"{'task':<14}{'pairs':>6}{'student':>10}{'teacher':>10}{'diff':>9}"
        f"{'CI low':>9}{'CI high':>9}{'margin':>16}{'p TOST':>10}{'p Holm':>10}  outcome"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for t in p.get("tasks", []):
        ci = t.get("ci", {})
        m = t.get("margin", {})
        margin = (
            f"±{_fmt(m.get('high'), '.3g')}"
            if m.get("high") == -m.get("low", 0)
            else (f"({_fmt(m.get('low'), '.3g')}, {_fmt(m.get('high'), '.3g')})")
        )
        lines.append(
            f"{t.get('name', '?'):<14}{t.get('n_pairs', 0):>6}"
            f"{_fmt(t.get('student_mean'), '.1f'):>10}{_fmt(t.get('teacher_mean'), '.1f'):>10}"
            f"{_fmt(t.get('mean_diff'), '.2f'):>9}{_fmt(ci.get('low'), '.2f'):>9}"
            f"{_fmt(ci.get('high'), '.2f'):>9}{margin:>16}"
            f"{_fmt(t.get('p_tost'), '.3g'):>10}{_fmt(t.get('p_holm'), '.3g'):>10}  "
            f"{t.get('outcome', t.get('error', '?'))}"
        )
    lines.extend(_arm_lines(p))
    agg = p.get("aggregate", {}).get("normalised_iqm")
    if agg:
        lines.append("")
        lines.append(
            f"normalised IQM (0 = random, 1 = teacher): student {agg['student']:.3f} "
            f"[{agg['student_ci'][0]:.3f}, {agg['student_ci'][1]:.3f}], teacher "
            f"{agg['teacher']:.3f} [{agg['teacher_ci'][0]:.3f}, {agg['teacher_ci'][1]:.3f}]"
        )
    lines.append("")
    lines.append("gates:")
    for g in p.get("gates", []):
        where = f" [{g['task']}]" if g.get("task") else ""
        mark = {"pass": "ok  ", "unknown": "??  "}.get(str(g.get("outcome")), "FAIL")
        lines.append(f"  {mark} {g.get('name')}{where}: {g.get('reason')}")
    exe = p.get("execution", {})
    lines.append("")
    lines.append(
        f"execution: {exe.get('via', '?')} on {', '.join(exe.get('providers', [])) or '?'}, "
        f"{exe.get('precision', '?')}, onnxruntime {exe.get('onnxruntime', '?')}"
    )
    for row in p.get("numeric_parity", {}).get("providers", []):
        if "max_abs" in row:
            lines.append(
                f"numeric parity {row['provider']} (ran on {row.get('ran_on')}): "
                f"max |Δ| {row['max_abs']:.3g} over {row.get('n_inputs')} inputs"
            )
        else:
            lines.append(
                f"numeric parity {row['provider']}: {row.get('skipped') or row.get('error')}"
            )
    return "\n".join(lines) + "\n"


def _teacher(t: dict[str, Any]) -> str:
    """The reference arm in a few words: kind, where it came from, what it is."""
    what = t.get("bundle") or t.get("world_model_digest") or ""
    source = t.get("source")
    return " ".join(
        x for x in (str(t.get("kind", "?")), f"({source})" if source else "", str(what)[:30]) if x
    )


def _arm_lines(p: dict[str, Any]) -> list[str]:
    """The envelope and normaliser each arm applied, and how often the student's was used."""
    arms = p.get("arms")
    if not isinstance(arms, dict):
        return []
    student = arms.get("student", {})
    ks = student.get("kernel_settings", {})
    reference = arms.get("reference", {})
    lines = [
        "",
        f"student arm: {student.get('via', '?')}, settings sha256 "
        f"{str(student.get('settings_digest', ''))[:16]}… (fallback {ks.get('fallback', '?')}, "
        f"max_action_delta {ks.get('max_action_delta')}, normaliser "
        f"{'in the manifest' if ks.get('obs_mean') is not None else 'in the graph or none'})",
        f"reference arm: {reference.get('kind', '?')}, settings sha256 "
        f"{str(reference.get('settings_digest', ''))[:16]}…",
    ]
    outcomes = {t.get("name"): t.get("outcome") for t in p.get("tasks", [])}
    steps = student.get("steps", {})
    for task, counts in sorted(student.get("interventions", {}).items()):
        total = sum(counts.values())
        if not total:
            lines.append(f"  student interventions [{task}]: none")
            continue
        n = steps.get(task) or 0
        share = f" on {n} steps ({total / n:.0%})" if n else ""
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        lines.append(f"  student interventions [{task}]: {total}{share}: {detail}")
        if n and total / n >= 0.05 and outcomes.get(task) != "equivalent":
            lines.append(
                f"  -> the safety envelope changed {total / n:.0%} of the student's actions on "
                f"{task}; the verdict judges the actions the robot would take"
            )
    return lines


def plot_differences(statement: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Two rows, one column per task. Top: paired differences, their mean and (1 − 2α) CI
    against the equivalence margin band. Bottom: the two arms' return distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime.atomicio import atomic_writer

    p = statement.get("predicate", {})
    tasks = [t for t in p.get("tasks", []) if t.get("student_returns")]
    if not tasks:
        raise ValueError("the attestation carries no per-task returns to plot")
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.2 * len(tasks) + 1, 7), squeeze=False)
    rng = np.random.default_rng(0)
    for col, t in enumerate(tasks):
        ax, dist = axes[0][col], axes[1][col]
        student = np.asarray(t["student_returns"], dtype=float)
        teacher = np.asarray(t["teacher_returns"], dtype=float)
        d = student - teacher
        m = t["margin"]
        ax.axhspan(m["low"], m["high"], color="tab:green", alpha=0.15, label="margin")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.scatter(rng.uniform(-0.25, 0.25, d.size), d, s=8, alpha=0.5, color="tab:blue")
        ci = t.get("ci")
        if ci:
            mean = t["mean_diff"]
            ax.errorbar(
                [0.5],
                [mean],
                yerr=[[mean - ci["low"]], [ci["high"] - mean]],
                fmt="o",
                color="black",
                capsize=5,
                label=f"mean, {ci['level']:.0%} CI",
            )
        ax.set_xticks([])
        ax.set_xlim(-0.5, 1.0)
        ax.set_title(f"{t['name']}: {t.get('outcome', '?')}", fontsize=10)
        ax.set_ylabel("student − teacher return")
        bins = np.histogram_bin_edges(np.concatenate([student, teacher]), bins="auto")
        dist.hist(teacher, bins=bins, alpha=0.5, color="tab:orange", label="teacher")
        dist.hist(student, bins=bins, alpha=0.5, color="tab:blue", label="student")
        dist.set_xlabel("episode return")
        dist.set_ylabel("episodes")
    axes[0][0].legend(loc="lower left", fontsize=8)
    axes[1][0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"parity: {p.get('verdict', '?')}", fontsize=11)
    fig.tight_layout()
    out = Path(path)
    with atomic_writer(out) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return out
