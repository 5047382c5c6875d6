"""`edgeflux distill ...`: distil a teacher into a signed ONNX policy, and evaluate bundles.

edgeflux distill run --env Pendulum-v1 --teacher oracle --out out/ --sign-key keys/signing.pem
edgeflux distill eval out/pendulum-v1-0.1.0 --episodes 100
edgeflux distill envs
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

__all__ = ["distill"]


@contextmanager
def _user_errors() -> Iterator[None]:
    from distill.errors import DistillError
    from runtime.bundle import BundleError
    from runtime.manifest import ManifestError
    from runtime.session import SessionError

    try:
        yield
    except (DistillError, BundleError, ManifestError, SessionError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def _variant(pairs: tuple[str, ...]) -> dict[str, float] | None:
    out: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            msg = f"{pair!r} is not KEY=NUMBER"
            raise click.BadParameter(msg, param_hint="--variant") from None
    return out or None


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        msg = f"{text!r} is not comma-separated widths"
        raise click.BadParameter(msg, param_hint="--hidden") from None


def _planner(samples: int | None, iterations: int | None) -> Any:
    """The world-model teacher's MPPI settings; None keeps the pipeline's device default."""
    from distill.mppi import MPPIConfig

    if samples is None and iterations is None:
        return None
    n = samples or 512
    return MPPIConfig(
        num_samples=n,
        iterations=iterations or 6,
        num_elites=max(1, min(64, n // 8)),
        num_pi_trajs=min(24, n // 4),
    )


def _quiet(env_ids: list[str]) -> None:
    """Keep library chatter out of the operator's output: torch's ONNX exporter warns
    about every torchvision operator it cannot register (torchvision is not needed),
    and MuJoCo's model compiler prints deprecation notes about gymnasium's own XML.
    Both still reach the log at debug level."""
    import logging

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # One line per ONNX session opened for evaluation: robot news, not a trainer's.
        logging.getLogger("runtime.session").setLevel(logging.WARNING)
    import gymnasium

    def mujoco_env(env_id: str) -> bool:
        try:
            return "mujoco" in str(gymnasium.spec(env_id).entry_point)
        except gymnasium.error.Error:
            return False

    if any(mujoco_env(e) for e in env_ids):
        try:
            import mujoco
        except ImportError:
            return
        log = logging.getLogger("distill.mujoco")
        mujoco.set_mju_user_warning(lambda msg: log.debug("MuJoCo: %s", msg))


@click.group(name="distill")
def distill() -> None:
    """Distil a world model (or an oracle planner) into a signed ONNX policy."""


@distill.command("envs")
@click.option("--json", "as_json", is_flag=True)
def envs_cmd(as_json: bool) -> None:
    """List the environments distill knows, with their bounds and control rates."""
    from distill.envs import KNOWN_ENVS, env_spec

    rows: list[dict[str, Any]] = []
    _quiet(list(KNOWN_ENVS))
    with _user_errors():
        for env_id in sorted(KNOWN_ENVS):
            spec = env_spec(env_id)
            rows.append(
                {
                    "env_id": env_id,
                    "obs_dim": spec.obs_dim,
                    "act_dim": spec.act_dim,
                    "rate_hz": spec.rate_hz,
                    "variants": sorted(KNOWN_ENVS[env_id].variants),
                }
            )
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(
            f"{r['env_id']:<16} obs {r['obs_dim']:>3}  act {r['act_dim']:>2}  "
            f"{r['rate_hz']:g} Hz  variants: {', '.join(r['variants']) or '-'}"
        )


@distill.command("run")
@click.option("--env", "env_id", default="Pendulum-v1", show_default=True)
@click.option(
    "--teacher",
    type=click.Choice(["oracle", "world-model"]),
    default="oracle",
    show_default=True,
    help="oracle: MPPI over Pendulum's known dynamics; world-model: a learned world model "
    "(--wm-family trained online, --wm-dataset offline, or --wm-checkpoint) acting as "
    "--teacher-policy says.",
)
@click.option(
    "--teacher-policy",
    type=click.Choice(["auto", "actor", "mppi"]),
    default="auto",
    show_default=True,
    help="World-model teacher: act with the model's own policy prior (actor), plan with "
    "MPPI over the model (mppi; hundreds of times slower per step on a CPU), or auto: "
    "the actor when the model has a policy prior, else MPPI.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="ECDSA P-256 private key (PEM) to sign the bundle (edgeflux bundle keygen).",
)
@click.option("--passphrase-env", help="Read the signing key's passphrase from this env var.")
@click.option("--seed", type=int, default=0, show_default=True, help="Fixes every random choice.")
@click.option("--name", help="Bundle name [default: from the env id].")
@click.option("--version", "version", default="0.1.0", show_default=True)
@click.option("--sequence", type=int, default=1, show_default=True)
@click.option("--variant", "variant", multiple=True, metavar="KEY=VALUE", help="e.g. g=12.0")
@click.option("--eval-episodes", type=int, default=100, show_default=True)
@click.option("--rounds", type=int, default=5, show_default=True, help="DAgger rounds.")
@click.option("--envs-per-round", type=int, default=16, show_default=True)
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--hidden", default="64,64", show_default=True, help="Student hidden widths.")
@click.option("--activation", type=click.Choice(["relu", "elu", "silu"]), default="elu")
@click.option("--wm-steps", type=int, default=10_000, show_default=True,
              help="World-model training: environment steps.")  # fmt: skip
@click.option("--wm-seed-steps", type=int, default=1_000, show_default=True,
              help="World-model training: random-action steps before planning.")  # fmt: skip
@click.option("--wm-envs", type=int, default=4, show_default=True,
              help="World-model training: environments stepped together.")  # fmt: skip
@click.option("--wm-utd", type=float, default=1.0, show_default=True,
              help="World-model training: gradient updates per environment step.")  # fmt: skip
@click.option("--wm-family", default="tdmpc2", show_default=True,
              help="World-model family to train (built-in or from an edgeflux.world_models "
                   "entry point).")  # fmt: skip
@click.option("--wm-dataset", type=click.Path(path_type=Path),
              help="Train the world model offline from this directory of .npz episodes "
                   "(observations, actions, rewards, terminations), or from one "
                   "edgeflux.replay/v1 file such as `cloud recordings export --npz` "
                   "writes.")  # fmt: skip
@click.option("--wm-rewards", type=click.Choice(["recorded", "env"]), default="recorded",
              show_default=True,
              help="Offline training: the dataset's rewards, or the environment's reward "
                   "function of observation and action (for flight recordings, which "
                   "carry none).")  # fmt: skip
@click.option("--wm-updates", type=int, default=2_000, show_default=True,
              help="Offline training (--wm-dataset): gradient steps.")  # fmt: skip
@click.option("--wm-checkpoint", type=click.Path(path_type=Path),
              help="Distil from this saved world model (a directory `distill run` or "
                   "`python -m distill.train_wm` wrote) instead of training one.")  # fmt: skip
@click.option("--mppi-samples", type=int,
              help="World-model teacher: MPPI samples [CPU 256, GPU 512].")  # fmt: skip
@click.option("--mppi-iterations", type=int,
              help="World-model teacher: MPPI iterations per step [CPU 4, GPU 6].")  # fmt: skip
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--external-data/--no-external-data", default=None,
              help="Keep the student's weights in ONNX external data (policy.onnx.data) "
                   "[default: when they pass 1 GiB].")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def run_cmd(
    env_id: str,
    teacher: str,
    teacher_policy: str,
    out_dir: Path,
    sign_key: Path | None,
    passphrase_env: str | None,
    seed: int,
    name: str | None,
    version: str,
    sequence: int,
    variant: tuple[str, ...],
    eval_episodes: int,
    rounds: int,
    envs_per_round: int,
    epochs: int,
    hidden: str,
    activation: str,
    wm_steps: int,
    wm_seed_steps: int,
    wm_envs: int,
    wm_utd: float,
    wm_family: str,
    wm_dataset: Path | None,
    wm_rewards: str,
    wm_updates: int,
    wm_checkpoint: Path | None,
    mppi_samples: int | None,
    mppi_iterations: int | None,
    threads: int,
    external_data: bool | None,
    as_json: bool,
) -> None:
    """Teacher → DAgger student → ONNX (parity-checked) → signed bundle in OUT."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Column

    from distill.dagger import DaggerConfig
    from distill.pipeline import STAGES, DistillConfig, run_pipeline
    from distill.student import StudentConfig
    from distill.train_wm import TrainConfig

    passphrase = None
    if passphrase_env:
        if passphrase_env not in os.environ:
            raise click.ClickException(f"--passphrase-env: ${passphrase_env} is not set")
        passphrase = os.environ[passphrase_env].encode()
    if sign_key is not None and not sign_key.is_file():
        raise click.ClickException(f"--sign-key {sign_key}: no such file")
    with _user_errors():
        cfg = DistillConfig(
            out_dir=out_dir,
            env_id=env_id,
            teacher=teacher,  # type: ignore[arg-type]
            sign_key=sign_key,
            passphrase=passphrase,
            seed=seed,
            name=name,
            version=version,
            sequence=sequence,
            variant=_variant(variant),
            eval_episodes=eval_episodes,
            dagger=DaggerConfig(rounds=rounds, envs_per_round=envs_per_round, epochs=epochs),
            student=StudentConfig(hidden=_hidden(hidden), activation=activation),
            train=TrainConfig(
                family=wm_family,
                total_steps=wm_steps,
                seed_steps=wm_seed_steps,
                num_envs=wm_envs,
                updates_per_step=wm_utd,
            ),
            dataset=wm_dataset,
            dataset_rewards=wm_rewards,
            offline_updates=wm_updates,
            checkpoint=wm_checkpoint,
            teacher_policy=teacher_policy,  # type: ignore[arg-type]
            teacher_mppi=_planner(mppi_samples, mppi_iterations),
            threads=threads,
            external_data=external_data,
        )
    _quiet([env_id])
    with _user_errors():
        from distill.envs import make_env

        # An unknown id or a bad --variant fails here, before any progress bar or file.
        make_env(env_id, cfg.variant).close()
        if teacher == "world-model" and wm_checkpoint is None:
            from distill.wm_registry import load_family

            load_family(wm_family)
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description:<12}", table_column=Column(min_width=12, no_wrap=True)),
        BarColumn(bar_width=24, table_column=Column(width=24)),
        TextColumn("{task.fields[count]:>16}", table_column=Column(min_width=16, no_wrap=True)),
        TimeElapsedColumn(table_column=Column(min_width=7, no_wrap=True)),
        TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
        console=err,
        transient=False,
        disable=as_json and not err.is_terminal,
    )
    bars = _StageBars(progress, STAGES, _units(cfg), rounds)
    existed = out_dir.exists()
    try:
        with progress, _user_errors():
            result = run_pipeline(cfg, bars.report)
    except BaseException:
        # A run that failed before writing anything leaves no empty directory behind.
        if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    s = result.summary
    if as_json:
        click.echo(json.dumps(s, sort_keys=True))
        return
    _print_summary(s, Console())


def _units(cfg: Any) -> dict[str, tuple[str, int | None]]:
    """What each stage counts, and how many, as far as the configuration says."""
    d = cfg.dagger
    world_model = cfg.teacher == "world-model" and cfg.checkpoint is None
    teacher: tuple[str, int | None] = ("", None)
    if world_model:
        offline = cfg.dataset is not None
        teacher = ("updates", cfg.offline_updates) if offline else ("steps", cfg.train.total_steps)
    return {
        "teacher": teacher,
        "teacher-eval": ("episodes", 2 * cfg.eval_episodes),  # teacher and random arms
        "dagger": ("epochs", d.rounds * d.epochs),
        "student-eval": ("episodes", cfg.eval_episodes),
    }


class _StageBars:
    """One bar per stage counting what the stage does (world-model steps, DAgger epochs
    across rounds, episodes) instead of 0/1 → 1/1; a stage with nothing to count shows
    its elapsed time only."""

    def __init__(
        self, progress: Any, stages: Any, units: dict[str, tuple[str, int | None]], rounds: int
    ) -> None:
        self.progress = progress
        self.units = units
        self.rounds = rounds
        self.tasks = {
            s: progress.add_task(
                s, total=units.get(s, ("", None))[1] or 1, start=False, count="", info=""
            )
            for s in stages
        }

    def report(self, stage: str, done: float, total: float, info: dict[str, Any]) -> None:
        task_id = self.tasks[stage]
        task = self.progress.tasks[task_id]
        unit, _ = self.units.get(stage, ("", None))
        self.progress.start_task(task_id)
        if "seconds" in info:  # the stage finished: what it counted is complete
            total = task.total or 1
            done = total
        elif done == 0 and total == 1:  # the stage started: keep the planned count
            total = task.total or 1
        parts = [f"round {int(info['round'])}/{self.rounds}"] if "round" in info else []
        parts += [
            f"{k.replace('mixture_return', 'return')} {v:.3g}"
            for k, v in info.items()
            if isinstance(v, float) and k not in ("seconds", "round")
        ]
        self.progress.update(
            task_id,
            completed=done,
            total=total,
            count=f"{done:.0f}/{total:.0f} {unit}" if unit else "",
            info="  ".join(parts)[:40] or task.fields.get("info", ""),
        )


def _print_summary(s: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"distill {s['env_id']} ({s['teacher']} teacher, seed {s['seed']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    n = s["eval_episodes"]
    table.add_row(f"teacher return ({n} shared states)", f"{s['teacher_return']:.1f}")
    table.add_row("student return (onnxruntime)", f"{s['student_return']:.1f}")
    table.add_row("random return", f"{s['random_return']:.1f}")
    table.add_row("gap / (teacher - random)", f"{100 * s['gap_fraction_of_range']:.2f} %")
    p = s["numeric_parity"]
    table.add_row(
        "numeric parity torch vs onnx",
        f"{'PASS' if p['passed'] else 'FAIL'} n={p['n']} max|Δ|={p['max_abs']:.2e}",
    )
    v = s.get("world_model_validation")
    if v:
        table.add_row(
            f"world-model reward MSE, {v['val_episodes']:.0f} held-out episodes",
            f"{v['val_reward_mse']:.3g} (untrained {v['val_reward_mse_untrained']:.3g})",
        )
    for stage, secs in s["seconds"].items():
        table.add_row(f"time: {stage}", f"{secs:.1f} s")
    table.add_row("bundle", s["bundle_dir"] + ("" if s["signed"] else " (UNSIGNED)"))
    console.print(table)


@distill.command("eval")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--env", "env_id", help="Environment [default: the bundle's provenance env_id].")
@click.option("--episodes", type=int, default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Selects the shared initial states (same as `distill run --seed`).")  # fmt: skip
@click.option("--variant", "variant", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--trust-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Verify the bundle's signature against this trust store first.",
)
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(
    bundle: Path,
    env_id: str | None,
    episodes: int,
    seed: int,
    variant: tuple[str, ...],
    trust_dir: Path | None,
    as_json: bool,
) -> None:
    """Run BUNDLE's policy as the robot does (runtime.kernel, not torch) and report returns."""
    from distill.envs import env_spec
    from distill.errors import DistillError
    from distill.evaluate import OnnxPolicy, episode_returns
    from distill.pipeline import _eval_seeds
    from runtime.manifest import load_manifest

    with _user_errors():
        if trust_dir is not None:
            from runtime.bundle import verify_bundle
            from runtime.trust import TrustStore

            verify_bundle(bundle, TrustStore(trust_dir))
        if not (bundle / "edgeflux.json").is_file():
            raise DistillError(
                f"{bundle} is not a bundle directory (no edgeflux.json); give the directory "
                "`distill run` or `bundle create` wrote"
            )
        manifest = load_manifest(bundle)
        env_id = env_id or manifest.provenance.env_id
        if not env_id:
            raise DistillError(f"{bundle}: the manifest names no env_id; pass --env")
        spec = env_spec(env_id)
        if (manifest.io.obs_dim, manifest.io.action_dim) != (spec.obs_dim, spec.act_dim):
            raise DistillError(
                f"{bundle}: policy maps {manifest.io.obs_dim} observations to "
                f"{manifest.io.action_dim} actions, but {env_id} has {spec.obs_dim} and "
                f"{spec.act_dim}"
            )
        seeds = _eval_seeds(seed, episodes)
        returns = episode_returns(
            env_id, OnnxPolicy(bundle / "policy.onnx"), seeds, _variant(variant)
        )
    result = {
        "bundle": str(bundle),
        "env_id": env_id,
        "episodes": episodes,
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "min_return": float(returns.min()),
        "max_return": float(returns.max()),
        "verified": trust_dir is not None,
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"{manifest.name} {manifest.version} on {env_id}: mean return "
            f"{result['mean_return']:.1f} ± {result['std_return']:.1f} over {episodes} episodes"
        )
