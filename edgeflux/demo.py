"""`edgeflux demo`: the whole pipeline on one machine, on embedded defaults.

Usage::

    edgeflux demo                    # run it, then keep the stack up until Ctrl-C
    edgeflux demo --exit --json demo/summary.json
    edgeflux demo --fresh            # forget the cached policies and retrain them

What it does, each step through the same commands an operator would type (every
component runs as its own process; logs in ``demo/logs/``):

1. ``cloud init`` + ``cloud up`` (SQLite, the embedded MQTT broker with ingest,
   loopback);
2. ``distill run`` a Pendulum policy (oracle MPPI teacher) and sign it;
3. ``attest run`` a parity campaign; the attestation is stored in the plane;
4. ``cloud publish``; ``cloud device add`` + ``flash`` three simulated robots
   (``dir:`` targets under ``demo/robots/``); start their runtimes (gymnasium
   Pendulum robots) and agents;
5. live telemetry through the admin gRPC API;
6. distil, attest and publish v2, and roll it out in two waves (``rollout create``:
   one robot first, the rest after it committed); watch every robot commit it;
7. push a properly signed bundle whose policy outputs NaN; watch every robot refuse
   it and keep running v2 (robots 1-2 catch the NaN in shadow; robot-3 runs with
   ``require_parity_attestation`` and refuses the unattested bundle outright, while it
   accepted the attested v2);
8. ``attest get`` the v2 attestation over gRPC (mTLS) and verify it offline.

Distilled policies are cached in ``demo/cache`` (keyed by seed and budget) and
re-signed for each run's fresh control plane; ``--fresh`` retrains them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from edgeflux._processes import ProcessGroup, edgeflux_command

__all__ = ["DemoOptions", "DemoSummary", "demo", "run_demo"]

ROBOTS = ("robot-1", "robot-2", "robot-3")
ATTESTED_ONLY = "robot-3"
"""This robot runs with `require_parity_attestation`: it refuses unattested bundles."""
BUNDLE_NAME = "pendulum"


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    quick: bool = False
    teacher: str = "oracle"
    telemetry_s: float = 6.0
    fresh: bool = False

    @property
    def distill_args(self) -> list[str]:
        if self.quick:
            return ["--rounds", "3", "--eval-episodes", "10", "--epochs", "15"]
        return ["--eval-episodes", "30"]

    @property
    def campaign_episodes(self) -> int:
        return 30 if self.quick else 60


@dataclass
class StageResult:
    name: str
    status: str  # "done" | "failed"
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DemoSummary:
    stages: list[StageResult] = field(default_factory=list)
    robots: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundles: dict[str, dict[str, Any]] = field(default_factory=dict)
    attestation: dict[str, Any] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    all_committed_v2: bool = False
    broken_refused_everywhere: bool = False
    attestation_verified: bool = False

    @property
    def ok(self) -> bool:
        return (
            all(s.status == "done" for s in self.stages)
            and self.all_committed_v2
            and self.broken_refused_everywhere
            and self.attestation_verified
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Demo:
    """The orchestration; one method per stage, each leaving facts in `summary`."""

    def __init__(self, opts: DemoOptions, procs: ProcessGroup, echo: Callable[[str], None]):
        self.opts = opts
        self.procs = procs
        self.echo = echo
        self.summary = DemoSummary()
        w = opts.workdir
        self.home = w / "plane"
        self.bundles = w / "bundles"
        self.cache = w / "cache"
        self.robots_dir = w / "robots"
        self.grpc_port = _free_port()
        self.broker_port = _free_port()
        self._admin: Any = None

    # ---------------------------------------------------------------- helpers
    def cli(self, name: str, *args: str, timeout_s: float = 120) -> str:
        return self.procs.run(name, edgeflux_command(*args), timeout_s)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def broker_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.broker_port}"

    def admin(self) -> Any:
        """FleetAdminService stub with the first operator's (admin) certificate."""
        if self._admin is None:
            import grpc

            from protos import admin_pb2_grpc

            crt = self.home / "pki" / "operators" / "admin.crt"
            key = self.home / "pki" / "operators" / "admin.key"
            ca = self.home / "pki" / "ca.crt"
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca.read_bytes(),
                private_key=key.read_bytes(),
                certificate_chain=crt.read_bytes(),
            )
            channel = grpc.secure_channel(self.address, creds)
            self._admin = admin_pb2_grpc.FleetAdminServiceStub(channel)  # type: ignore[no-untyped-call]
        return self._admin

    def devices(self) -> dict[str, Any]:
        from protos import admin_pb2

        reply = self.admin().ListDevices(
            admin_pb2.ListDevicesRequest(label_selector="fleet=demo"), timeout=5
        )
        return {d.id: d for d in reply.devices}

    # ---------------------------------------------------------------- stages
    def reset(self) -> str:
        w = self.opts.workdir
        if self.opts.fresh and w.exists():
            shutil.rmtree(w)
        for d in (self.home, self.bundles, self.robots_dir, w / "logs", w / "campaigns"):
            if d.exists():
                shutil.rmtree(d)
        w.mkdir(parents=True, exist_ok=True)
        cached = sorted(p.name for p in self.cache.glob("*/edgeflux.json"))
        return f"{w} ready" + (f"; {len(cached)} cached policies" if cached else "")

    def cloud_up(self) -> str:
        self.cli("cloud-init", "cloud", "init", str(self.home))
        self.procs.env["EDGEFLUX_CLOUD_EMBEDDED_BROKER_PORT"] = str(self.broker_port)
        plane = self.procs.start(
            "cloud-up",
            edgeflux_command(
                "cloud", "up", "--home", str(self.home), "--port", str(self.grpc_port), "--broker"
            ),
        )
        self.procs.wait_for(
            lambda: _port_open(self.grpc_port) and _port_open(self.broker_port),
            60,
            "the control plane and its embedded broker",
            watch=[plane],
        )
        # `cloud up` runs MQTT ingest in-process when it starts the broker.
        self.procs.wait_for(lambda: self.devices() is not None, 30, "the admin API", watch=[plane])
        self.summary.endpoints = {
            "grpc": self.address,
            "mqtt": self.broker_url,
            "home": str(self.home),
        }
        return f"gRPC (mTLS) on {self.address}, embedded MQTT broker on {self.broker_url}"

    def _signing_key(self) -> Path:
        return self.home / "keys" / "model-signing.key"

    def distill(self, version: str, sequence: int, seed: int) -> str:
        """Distil (or reuse the cached policy for this seed and budget) and sign."""
        budget = "quick" if self.opts.quick else "full"
        run_dir = self.cache / f"{BUNDLE_NAME}-s{seed}-{self.opts.teacher}-{budget}-{version}"
        cached = run_dir / f"{BUNDLE_NAME}-{version}"  # where `distill run` puts the bundle
        summary_file = run_dir / "summary.json"
        detail = " (cached policy, re-signed)"
        if not (cached / "edgeflux.json").is_file() or not summary_file.is_file():
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
                "--json",
                timeout_s=3600,
            )
            detail = ""
        stats = json.loads(summary_file.read_text())
        # The policy is cached; the signature is made for this run's control plane.
        out = self.bundles / f"{BUNDLE_NAME}-{version}"
        out.mkdir(parents=True)
        for f in cached.iterdir():
            if f.name != "model.sig":
                shutil.copy2(f, out / f.name)
        self.cli(f"sign-{version}", "bundle", "sign", str(out), "--key", str(self._signing_key()))
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
        )
        result = _json_out(raw)
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

    def live_telemetry(self, seconds: float) -> str:
        from rich.live import Live

        end = time.monotonic() + seconds
        with Live(self._fleet_table(), refresh_per_second=4, transient=False) as live:
            while time.monotonic() < end:
                time.sleep(0.5)
                live.update(self._fleet_table())
        ticks = {k: d.health.loop_p99_ms for k, d in self.devices().items()}
        return "loop p99 (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in ticks.items())

    def _fleet_table(self) -> Any:
        from rich.table import Table

        table = Table(title="fleet (admin API, refreshed live)")
        for col in (
            "device",
            "online",
            "bundle",
            "update",
            "loop p99 ms",
            "misses",
            "interventions",
            "cpu %",
        ):
            table.add_column(col)
        try:
            devices = self.devices()
        except Exception as exc:  # shown, not fatal: the plane may be busy
            table.caption = f"admin API unavailable: {exc}"
            return table
        for dev_id in sorted(devices):
            d = devices[dev_id]
            state = d.update_state + (f" ({d.update_reason})" if d.update_reason else "")
            table.add_row(
                dev_id,
                "yes" if d.online else "no",
                d.active_bundle.version or "-",
                state or "-",
                f"{d.health.loop_p99_ms:.2f}",
                f"{d.health.deadline_miss_rate:.3%}",
                str(d.health.safety_interventions),
                f"{d.health.cpu_percent:.0f}",
            )
        return table

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

    def _runtime_status(self, robot: str) -> Any:
        from runtime.control_client import RuntimeControlClient
        from runtime.layout import RobotLayout

        sock = RobotLayout.at(self.robots_dir / robot).runtime_socket
        with RuntimeControlClient(sock, 5) as rt:
            return rt.status()

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
        rollout_id = str(_json_out(raw).get("id", ""))

        def committed() -> bool:
            return all(
                self._runtime_status(r).anti_rollback.get(BUNDLE_NAME, 0) == 2 for r in ROBOTS
            )

        with _live(self._fleet_table) as refresh:
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

        refused = ("FAILED", "ROLLED_BACK")
        with _live(self._fleet_table) as refresh:
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
        got = _json_out(raw)
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


def _json_out(raw: str) -> dict[str, Any]:
    """The JSON document a `--json` command printed (pretty-printed or on one line)."""
    text = raw.strip()
    start = text.find("{")
    if start < 0:
        raise ValueError(f"expected JSON output, got: {text[:200]!r}")
    doc = json.loads(text[start:])
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    return doc


@contextmanager
def _live(render: Callable[[], Any]) -> Iterator[Callable[[], None]]:
    from rich.live import Live

    with Live(render(), refresh_per_second=4) as live:
        yield lambda: live.update(render())


def run_demo(opts: DemoOptions, echo: Callable[[str], None], keep_running: bool) -> DemoSummary:
    procs = ProcessGroup(opts.workdir / "logs")
    d = Demo(opts, procs, echo)
    stages: list[tuple[str, Callable[[], str]]] = [
        ("prepare", d.reset),
        ("cloud up", d.cloud_up),
        ("distil policy v1.0.0", lambda: d.distill("1.0.0", 1, seed=0)),
        ("parity attestation v1.0.0", lambda: d.attest("1.0.0")),
        ("publish + flash 3 robots", d.publish_and_flash),
        ("live telemetry", lambda: d.live_telemetry(opts.telemetry_s)),
        ("distil policy v1.1.0", lambda: d.distill("1.1.0", 2, seed=1)),
        ("parity attestation v1.1.0", lambda: d.attest("1.1.0")),
        ("staged rollout of v1.1.0", d.rollout_v2),
        ("broken bundle is refused", d.broken_bundle),
        ("fetch attestation over gRPC", d.fetch_attestation),
    ]
    with procs:
        for name, fn in stages:
            start = time.monotonic()
            echo(f"[bold]▶ {name}[/bold]")
            try:
                detail = fn()
            except KeyboardInterrupt:
                d.summary.stages.append(
                    StageResult(name, "failed", "interrupted", time.monotonic() - start)
                )
                echo(f"[yellow]interrupted during {name}; stopping everything[/yellow]")
                break
            except Exception as exc:  # reported as the stage's failure; processes still stop
                d.summary.stages.append(
                    StageResult(name, "failed", str(exc), time.monotonic() - start)
                )
                echo(f"[red]✘ {name}: {exc}[/red]")
                break
            took = time.monotonic() - start
            d.summary.stages.append(StageResult(name, "done", detail, took))
            echo(f"[green]✔[/green] {name} ({took:.1f}s): {detail}")
        if keep_running and d.summary.ok:
            _print_next_steps(d, echo)
            echo("The stack keeps running; press Ctrl-C to stop everything.")
            try:
                while all(p.alive() for p in procs.procs):
                    time.sleep(1)
                echo("[red]a component exited; stopping[/red]")
            except KeyboardInterrupt:
                echo("stopping…")
    return d.summary


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_next_steps(d: Demo, echo: Callable[[str], None]) -> None:
    home = d.home
    echo(
        "\n[bold]Where things live[/bold]\n"
        f"  control plane home   {home}  (gRPC {d.address}, MQTT {d.broker_url})\n"
        f"  robots               {d.robots_dir}/robot-N  (runtime.sock, slots, state)\n"
        f"  bundles              {d.bundles}\n"
        f"  logs                 {d.opts.workdir / 'logs'}\n"
        "[bold]Try next[/bold] (in another terminal, with .venv activated)\n"
        f"  edgeflux tui --cloud {d.address} --cert {home}/pki/operators/admin.crt "
        f"--key {home}/pki/operators/admin.key --ca {home}/pki/ca.crt\n"
        f"  edgeflux cloud devices --home {home}\n"
        f"  edgeflux runtime status --root {d.robots_dir}/robot-1\n"
        f"  edgeflux attest show {d.opts.workdir}/attestation-1.1.0.dsse.json\n"
    )


@click.command("demo")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Where the demo keeps its control plane, robots, logs and cache.",
)
@click.option("--exit", "exit_after", is_flag=True, help="Stop everything when done.")
@click.option("--fresh", is_flag=True, help="Also forget cached policies (retrain).")
@click.option("--quick", is_flag=True, help="Smaller training and campaign budgets (CI).")
@click.option(
    "--teacher",
    type=click.Choice(["oracle", "world-model"]),
    default="oracle",
    show_default=True,
    help="world-model: learn the teacher (much slower).",
)
@click.option("--telemetry-seconds", type=float, default=6.0, show_default=True)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a machine-readable summary here.",
)
def demo(
    workdir: Path,
    exit_after: bool,
    fresh: bool,
    quick: bool,
    teacher: str,
    telemetry_seconds: float,
    json_out: Path | None,
) -> None:
    """Run the whole pipeline end to end on this machine."""
    from rich.console import Console

    # SIGTERM (systemd, `kill`, a CI runner) stops everything the demo started, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    console = Console()
    opts = DemoOptions(
        workdir.absolute(), quick=quick, teacher=teacher, telemetry_s=telemetry_seconds, fresh=fresh
    )
    start = time.monotonic()
    console.print(f"[bold]EdgeFlux demo[/bold] in {opts.workdir} (logs: {opts.workdir}/logs)")
    summary = run_demo(
        opts, lambda msg: console.print(msg, highlight=False), keep_running=not exit_after
    )
    took = time.monotonic() - start
    console.print(
        f"\n[bold]{'OK' if summary.ok else 'FAILED'}[/bold] in {took:.0f}s: "
        f"v1.1.0 committed on all robots: {summary.all_committed_v2}; broken bundle refused "
        f"everywhere: {summary.broken_refused_everywhere}; attestation verified: "
        f"{summary.attestation_verified}"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        doc = summary.to_json()
        doc["seconds"] = took
        json_out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if not summary.ok:
        sys.exit(1)
    os.environ.pop("EDGEFLUX_CLOUD_EMBEDDED_BROKER_PORT", None)
