"""The demo's stages that make and ship policies: distil, attest, publish and flash,
push, the staged rollout, the broken bundle, the attestation fetched over gRPC."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cloud.attest.cli import EXIT_NOT_ATTESTED
from edgeflux._demo_config import ATTESTED_ONLY, BUNDLE_NAME, LEARNED_TEACHER_BUDGET_S, ROBOTS
from edgeflux._demo_stack import DemoStack, json_out, live
from edgeflux._processes import edgeflux_command
from protos.lifecycle import UpdateState

__all__ = ["Demo"]


class Demo(DemoStack):
    """The orchestration; one method per stage, each leaving facts in `summary`."""

    teacher_model: Path | None = None
    """The world model the first learned-teacher distillation trained; later versions
    are distilled from it (a new student of the same teacher)."""

    def run_dir(self, version: str, seed: int) -> Path:
        """Where `distill run` works for `version` (the cache, keyed by seed and budget)."""
        budget = "quick" if self.opts.quick else "full"
        return self.cache / f"{BUNDLE_NAME}-s{seed}-{self.opts.teacher}-{budget}-{version}"

    def is_cached(self, version: str, seed: int) -> bool:
        run_dir = self.run_dir(version, seed)
        bundle = run_dir / f"{BUNDLE_NAME}-{version}"  # where `distill run` puts the bundle
        return (bundle / "edgeflux.json").is_file() and (run_dir / "summary.json").is_file()

    def learned_teacher_plan(self, first: tuple[str, int]) -> str:
        """What `--teacher world-model` will cost on this machine now, said before starting:
        the training time is measured here (a second of probe steps), not assumed."""
        if not self.opts.fresh and self.is_cached(*first):
            return (
                f"learned teacher: the world model cached in {self.cache} is reused (no "
                "training; later versions are distilled from it in seconds); --fresh "
                "retrains it"
            )
        import os

        import torch

        from distill.envs import env_spec
        from distill.train_wm import TrainConfig, estimate_training_seconds

        torch.set_num_threads(1)
        cfg = TrainConfig()
        train_s = estimate_training_seconds(env_spec("Pendulum-v1"), cfg)
        total_s = train_s + 2 * 60  # and about a minute per version to distil and evaluate
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
        head = (
            f"learned teacher: a {cfg.family} world model trained online for "
            f"{cfg.total_steps:,} steps, then v1.0.0 and v1.1.0 distilled from its actor: "
            f"about {total_s / 60:.0f} min on this machine now (load {load:.1f} on {cpus} "
            f"CPUs), training measured at {train_s / 60:.1f} min"
        )
        budget = LEARNED_TEACHER_BUDGET_S / 60
        if total_s <= LEARNED_TEACHER_BUDGET_S:
            return f"{head}; within the demo's {budget:.0f}-min budget for it"
        return (
            f"{head}. That is over the demo's {budget:.0f}-min budget for the learned "
            f"teacher because this machine is {'busy' if load > cpus / 2 else 'slow'}; the "
            "demo goes on (Ctrl-C stops everything) and caches the trained model and "
            f"policies in {self.cache} for the next run"
        )

    def distill(self, version: str, sequence: int, seed: int) -> str:
        """Distil (or reuse the cached policy for this seed and budget) and sign."""
        run_dir = self.run_dir(version, seed)
        cached = run_dir / f"{BUNDLE_NAME}-{version}"  # where `distill run` puts the bundle
        summary_file = run_dir / "summary.json"
        detail = " (cached policy, re-signed)"
        reuse: list[str] = []
        if self.opts.teacher == "world-model" and self.teacher_model is not None:
            reuse = ["--wm-checkpoint", str(self.teacher_model)]
        if not self.is_cached(version, seed):
            if run_dir.exists():
                shutil.rmtree(run_dir)  # an interrupted run: start it over
            self.cli(
                f"distill-{version}",
                "distill",
                "run",
                "--env",
                "Pendulum-v1",
                "--teacher",
                self.opts.teacher,
                "--out",
                str(run_dir),
                "--sign-key",
                str(self._signing_key()),
                "--seed",
                str(seed),
                "--name",
                BUNDLE_NAME,
                "--version",
                version,
                "--sequence",
                str(sequence),
                *self.opts.distill_args,
                *reuse,
                "--json",
                timeout_s=3600,
            )
            detail = ""
        if self.opts.teacher == "world-model" and self.teacher_model is None:
            self.teacher_model = run_dir / "world_model"
        stats = json.loads(summary_file.read_text())
        # The policy is cached; the signature is made for this run's control plane.
        out = self.bundles / f"{BUNDLE_NAME}-{version}"
        out.mkdir(parents=True)
        for f in cached.iterdir():
            if f.name != "model.sig":
                shutil.copy2(f, out / f.name)
        self.cli(f"sign-{version}", "bundle", "sign", str(out), "--key", str(self._signing_key()))
        # The campaign finds a world-model teacher by digest beside the bundles.
        if (run_dir / "world_model" / "config.json").is_file():
            shutil.copytree(run_dir / "world_model", self.bundles / f"world_model-{version}")
        elif (run_dir / "world_model.pt").is_file():  # a run cached before saved-model dirs
            shutil.copy2(run_dir / "world_model.pt", self.bundles / f"world_model-{version}.pt")
        self.summary.bundles[version] = {
            "path": str(out),
            "sequence": sequence,
            "teacher_return": stats.get("teacher_return"),
            "student_return": stats.get("student_return"),
            "random_return": stats.get("random_return"),
            "numeric_parity_max_abs": stats.get("numeric_parity", {}).get("max_abs"),
        }
        return (
            f"{out.name}: teacher {stats.get('teacher_return', float('nan')):.0f}, "
            f"student {stats.get('student_return', float('nan')):.0f}, "
            f"random {stats.get('random_return', float('nan')):.0f}{detail}"
        )

    def attest(self, version: str) -> str:
        bundle = Path(self.summary.bundles[version]["path"])
        campaign = self.opts.workdir / "campaign.toml"
        campaign.write_text(
            "[campaign]\n"
            'name = "demo-pendulum"\n'
            "workers = 2\n"
            "min_pairs = 30\n\n"
            "[[task]]\n"
            'name = "nominal"\n'
            'env_id = "Pendulum-v1"\n'
            f"episodes = {self.opts.campaign_episodes}\n"
            "calibration_episodes = 20\n"
        )
        raw = self.cli(
            f"attest-{version}",
            "attest",
            "run",
            str(bundle),
            "--campaign",
            str(campaign),
            "--home",
            str(self.home),
            "--workdir",
            str(self.opts.workdir / "campaigns" / version),
            "--json",
            timeout_s=1800,
            ok=(0, EXIT_NOT_ATTESTED),  # a not-attested verdict is a result, not a failure
        )
        result = json_out(raw)
        verdict = str(result.get("verdict", "?"))
        self.summary.bundles[version]["attestation"] = verdict
        self.summary.bundles[version]["policy_sha256"] = result.get("policy_sha256", "")
        return f"{bundle.name}: verdict {verdict}"

    def publish_and_flash(self) -> str:
        v1 = Path(self.summary.bundles["1.0.0"]["path"])
        self.cli("publish-1.0.0", "cloud", "publish", str(v1), "--home", str(self.home))
        for robot in ROBOTS:
            self.cli(
                f"device-add-{robot}",
                "cloud",
                "device",
                "add",
                robot,
                "--home",
                str(self.home),
                "--label",
                "fleet=demo",
                "--label",
                f"site={'lab' if robot != 'robot-3' else 'field'}",
            )
            self.cli(
                f"flash-{robot}",
                "flash",
                "--device",
                robot,
                "--target",
                f"dir:{self.robots_dir / robot}",
                "--bundle",
                str(v1),
                "--home",
                str(self.home),
                "--cloud",
                self.address,
                "--broker",
                self.broker_url,
                "--no-wheelhouse",  # the demo's robots run from this venv (see docs)
                "--adapter",
                "gym",
                "--adapter-option",
                "env=Pendulum-v1",
                "--adapter-option",
                f"seed={ROBOTS.index(robot)}",
                "--runtime-option",
                "warmup_runs=5",
                # simulated robots share the workstation with the plane: no SCHED_FIFO
                "--runtime-option",
                "realtime_priority=null",
                "--agent-option",
                "telemetry_period_s=1.0",
                "--agent-option",
                "sample_period_s=0.5",
                "--agent-option",
                "hint_min_interval_s=0",
                "--agent-option",
                "shadow_ticks=40",
                "--agent-option",
                "health_window_ticks=60",
                # two students of one teacher differ by more than the 0.25 default
                "--agent-option",
                "shadow_divergence_max=2.0",
                "--agent-option",
                "shadow_latency_p99_ms_max=20",
                # robot-3 also refuses any bundle without a valid parity attestation
                "--agent-option",
                f"require_parity_attestation={'true' if robot == ATTESTED_ONLY else 'false'}",
                timeout_s=120,
            )
        for robot in ROBOTS:
            root = self.robots_dir / robot
            rt = self.procs.start(
                f"{robot}-runtime", edgeflux_command("runtime", "run", "--root", str(root))
            )
            sock = root / "run" / "edgeflux" / "runtime.sock"
            self.procs.wait_for(sock.exists, 90, f"{robot}'s runtime", watch=[rt])
            self.procs.start(
                f"{robot}-agent", edgeflux_command("agent", "run", "--root", str(root))
            )
        self.procs.wait_for(
            lambda: (
                all(d.online for d in self.devices().values())
                and len(self.devices()) == len(ROBOTS)
            ),
            60,
            "all robots online",
        )
        return f"{len(ROBOTS)} robots flashed under {self.robots_dir} and online"

    def push(self, version: str) -> None:
        bundle = Path(self.summary.bundles[version]["path"])
        self.cli(
            f"push-{version}",
            "cloud",
            "push",
            str(bundle),
            "--label",
            "fleet=demo",
            "--home",
            str(self.home),
            "--broker-url",
            self.broker_url,
            "--json",
        )

    def rollout_v2(self) -> str:
        """A staged rollout: one robot first, the rest only after it committed."""
        bundle = Path(self.summary.bundles["1.1.0"]["path"])
        self.cli("publish-1.1.0", "cloud", "publish", str(bundle), "--home", str(self.home))
        raw = self.cli(
            "rollout-1.1.0",
            "rollout",
            "create",
            f"{BUNDLE_NAME}@1.1.0",
            "--label",
            "fleet=demo",
            "--waves",
            "0.33,1",
            "--max-failure",
            "0",
            "--health-window",
            "300",
            "--home",
            str(self.home),
            "--server",
            self.address,
            "--json",
        )
        rollout_id = str(json_out(raw).get("id", ""))

        def committed() -> bool:
            return all(
                self._runtime_status(r).anti_rollback.get(BUNDLE_NAME, 0) == 2 for r in ROBOTS
            )

        with live(self._fleet_table) as refresh:
            self.procs.wait_for(
                lambda: (refresh(), committed())[1], 240, "every robot to commit v1.1.0"
            )
        from protos import admin_pb2

        def rollout() -> Any:
            return self.admin().GetRollout(admin_pb2.RolloutId(id=rollout_id), timeout=5)

        # The plane's driver sees the commits through ingest, a moment after the robots.
        self.procs.wait_for(lambda: rollout().state == "completed", 60, "the rollout to complete")
        done = rollout()
        self.summary.rollout = {
            "id": rollout_id,
            "state": done.state,
            "waves": [{"devices": list(w.device_ids), "state": w.state} for w in done.waves],
        }
        for r in ROBOTS:
            st = self._runtime_status(r)
            self.summary.robots[r] = {
                "v2_committed": st.anti_rollback.get(BUNDLE_NAME, 0) == 2,
                "active": st.active.bundle.version,
            }
        self.summary.all_committed_v2 = all(v["v2_committed"] for v in self.summary.robots.values())
        waves = " → ".join("+".join(w["devices"] or []) for w in self.summary.rollout["waves"])
        return f"rollout {rollout_id} ({waves}): v1.1.0 committed on " + ", ".join(ROBOTS)

    def broken_bundle(self) -> str:
        from edgeflux._demo_policies import write_nan_policy
        from runtime.bundle import create_bundle
        from runtime.manifest import load_manifest

        v2 = Path(self.summary.bundles["1.1.0"]["path"])
        manifest = load_manifest(v2).model_copy(update={"version": "1.2.0", "sequence": 3})
        onnx_path = self.opts.workdir / "broken-policy.onnx"
        write_nan_policy(
            onnx_path, manifest.io.obs_dim, manifest.io.action_dim, manifest.compatibility.opset
        )
        out = self.bundles / f"{BUNDLE_NAME}-1.2.0-broken"
        create_bundle(onnx_path, manifest, out)
        self.cli("sign-broken", "bundle", "sign", str(out), "--key", str(self._signing_key()))
        self.summary.bundles["1.2.0"] = {"path": str(out), "sequence": 3, "broken": True}
        self.push("1.2.0")

        refused = (UpdateState.FAILED, UpdateState.ROLLED_BACK)
        with live(self._fleet_table) as refresh:
            self.procs.wait_for(
                lambda: (
                    refresh(),
                    all(d.update_state in refused for d in self.devices().values()),
                )[1],
                180,
                "every robot to refuse the broken bundle",
            )
        devices = self.devices()
        outcome = []
        for r in ROBOTS:
            st = self._runtime_status(r)
            d = devices[r]
            self.summary.robots[r].update(
                {
                    "broken_outcome": d.update_state,
                    "broken_reason": d.update_reason,
                    "active_after_broken": st.active.bundle.version,
                    "counter_after_broken": int(st.anti_rollback.get(BUNDLE_NAME, 0)),
                }
            )
            outcome.append(f"{r} {d.update_state}/{d.update_reason}")
        self.summary.broken_refused_everywhere = all(
            v["broken_outcome"] in refused
            and v["active_after_broken"] == "1.1.0"
            and v["counter_after_broken"] == 2
            for v in self.summary.robots.values()
        )
        return "; ".join(outcome) + " — every robot still runs v1.1.0"

    def fetch_attestation(self) -> str:
        digest = self.summary.bundles["1.1.0"].get("policy_sha256", "")
        if not digest:
            from runtime.bundle import verify_bundle
            from runtime.trust import TrustStore

            vb = verify_bundle(
                Path(self.summary.bundles["1.1.0"]["path"]), TrustStore(self.home / "trust")
            )
            digest = vb.policy_sha256
        out = self.opts.workdir / "attestation-1.1.0.dsse.json"
        raw = self.cli(
            "attest-get",
            "attest",
            "get",
            digest,
            "--home",
            str(self.home),
            "--server",
            self.address,
            "--out",
            str(out),
            "--json",
        )
        got = json_out(raw)
        self.cli(
            "attest-verify",
            "attest",
            "verify",
            str(out),
            "--trust",
            str(self.home / "trust"),
            "--bundle",
            self.summary.bundles["1.1.0"]["path"],
        )
        verdict = str(got.get("verdict", "?"))
        self.summary.attestation = {
            "subject_sha256": digest,
            "verdict": verdict,
            "file": str(out),
            "verified_offline": True,
        }
        self.summary.attestation_verified = True
        return f"verdict {verdict}; signature, subject and expiry verified offline"
