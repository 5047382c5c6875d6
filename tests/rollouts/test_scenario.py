"""Rollouts through a real fleet: 50 simulated robots (each its own mTLS MQTT connection)
on the Mosquitto that `cloud broker-config` configures, a control plane run as
`edgeflux cloud up` on PostgreSQL, its MQTT ingest and its rollout driver.

The fleet first runs pendulum 1.0.0 (a one-wave rollout provisions it). Then, each on its
own group of robots: a bundle that raises the deadline-miss rate is paused after its
first wave and, resumed, rolled back once the abort threshold is crossed; a good bundle
completes with its soak; robots whose switch is held (an update lock, a closed
maintenance window: the simulated robot reports what the agent does) stage it and
switch once released; an unattested bundle is refused before its first wave; a wave
waits for approval, another for an external HTTP check that denies, then allows; a
robot added to the rollout's label mid-rollout gets the bundle; a robot whose download
fails is retried with backoff; the plane is killed during a soak and a new one carries
the rollout on, deciding each step once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.home import CloudHome, init_home
from cloud.pki import fingerprint
from cloud.publish import publish_bundle
from cloud.store import Store
from protos import admin_pb2, admin_pb2_grpc, common_pb2
from tests.budgets import slow_budget
from tests.cloud.conftest import make_bundle
from tests.rollouts.attestations import attest
from tests.rollouts.simfleet import Behaviour, SimFleet
from tests.servers import free_port, port_open, run_mosquitto, run_postgres, wait_until

pytestmark = [pytest.mark.services]
REPO = Path(__file__).resolve().parents[2]
GROUPS = {
    "bad": 20,
    "good": 6,
    "held": 2,  # one held by an update lock, one by a closed maintenance window
    "unattested": 2,
    "approval": 4,
    "external": 3,
    "retry": 4,
    "dynamic": 2,
    "spare": 1,  # joins the dynamic group's label mid-rollout
    "restart": 6,
}
# provisioned, bad, good, unattested: published when first used, in that order (the plane
# refuses a rollout of a sequence below the newest published one)
VERSIONS = {1: "1.0.0", 2: "1.1.0", 3: "1.2.0", 4: "1.3.0"}
BAD, GOOD, UNATTESTED = 2, 3, 4


class PlaneProcess:
    """`edgeflux cloud up` on the home (its database and broker from the home's config)."""

    def __init__(self, home: CloudHome, log: Path) -> None:
        self.home = home
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> PlaneProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        args = ["cloud", "up", "--home", str(self.home.root), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflux.cli", *args, "--metrics-port", "0", "--no-broker"],
            cwd=REPO,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        proc = self.proc
        wait_until(
            lambda: port_open(self.port) or proc.poll() is not None, 60, "the plane to listen"
        )
        assert proc.poll() is None, self.log.read_text()[-3000:]
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, nothing saved on the way out."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class World:
    home: CloudHome
    store: Store
    plane: PlaneProcess
    fleet: SimFleet
    behaviour: Behaviour
    groups: dict[str, list[str]]
    tmp: Path
    broker_log: Path

    def admin(self) -> Any:
        crt, key = self.home.operator_paths("admin")
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.home.ca_cert.read_bytes(),
            private_key=key.read_bytes(),
            certificate_chain=crt.read_bytes(),
        )
        channel = grpc.secure_channel(self.plane.address, creds)
        return admin_pb2_grpc.FleetAdminServiceStub(channel)  # type: ignore[no-untyped-call]

    def bundle(self, sequence: int) -> None:
        """Publish (and, but for the unattested one, attest) bundle `sequence` once."""
        if self.store.get_bundle("pendulum", VERSIONS[sequence]) is not None:
            return
        key = self.home.key_path("model-signing", private=True)
        src = make_bundle(
            self.tmp / f"b{sequence}",
            key,
            version=VERSIONS[sequence],
            sequence=sequence,
            seed=sequence,
        )
        rec = publish_bundle(self.home, self.store, src, actor="test")
        if sequence != UNATTESTED:
            attest(type("P", (), {"home": self.home, "store": self.store})(), rec)  # type: ignore[arg-type]

    def create(self, group: str, sequence: int, **kw: Any) -> admin_pb2.Rollout:
        self.bundle(sequence)
        req = admin_pb2.CreateRolloutRequest(
            bundle=common_pb2.BundleRef(name="pendulum", version=VERSIONS[sequence]),
            label_selector=f"group={group}",
            health_window_s=120,
            **kw,
        )
        return self.admin().CreateRollout(req, timeout=30)  # type: ignore[no-any-return]

    def get(self, rollout_id: str) -> admin_pb2.Rollout:
        return self.admin().GetRollout(admin_pb2.RolloutId(id=rollout_id), timeout=30)  # type: ignore[no-any-return]

    def until_state(self, rollout_id: str, states: tuple[str, ...], timeout: float) -> Any:
        got: list[admin_pb2.Rollout] = []

        def reached() -> bool:
            got[:] = [self.get(rollout_id)]
            return got[0].state in states

        try:
            wait_until(reached, timeout, f"rollout {rollout_id} to be {'/'.join(states)}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose(rollout_id)}") from exc
        return got[0]

    def diagnose(self, rollout_id: str) -> str:
        """What the plane and the robots did, for a failure message."""
        rec = self.store.get_rollout(rollout_id)
        lines = [f"rollout: {rec.state if rec else None}"]
        lines += [f"  {h}" for h in (self.history(rollout_id) if rec else [])][-15:]
        with self.behaviour.lock:
            lines.append(f"hints received: {len(self.behaviour.hints)}")
        some = next(iter(self.fleet.robots))
        events = self.store.events(some, kind="update", limit=10)
        lines.append(f"{some} events: {[(e.state, e.bundle) for e in events]}")
        lines.append(self.plane.log.read_text(errors="replace")[-3000:])
        lines.append(self.broker_log.read_text(errors="replace")[-3000:])
        return "\n".join(lines)

    def running(self, device: str) -> str:
        return self.fleet.active(device)[1]

    def desired(self, device: str) -> str:
        rec = self.store.get_device(device)
        assert rec is not None
        return str((rec.desired_bundle or {}).get("version", ""))

    def history(self, rollout_id: str) -> list[str]:
        rec = self.store.get_rollout(rollout_id)
        assert rec is not None
        return [str(h["reason"]) for h in rec.status["history"]]


def _broker_config(home: CloudHome, out: Path, port: int) -> str:
    res = CliRunner().invoke(
        cloud,
        [
            "broker-config",
            *("--home", str(home.root), "--out", str(out), "--port", str(port)),
            "--run-as",  # tmp_path is 0700: the broker keeps the test's user
            "root" if os.geteuid() == 0 else "mosquitto",
        ],
    )
    assert res.exit_code == 0, res.output
    return (out / "mosquitto.conf").read_text().replace("0.0.0.0", "127.0.0.1")


@contextlib.contextmanager
def make_world(tmp: Path, sizes: dict[str, int], period_s: float = 0.5) -> Iterator[World]:
    """PostgreSQL, the broker, the plane and `sizes` robots per group, all on 1.0.0."""
    with run_postgres() as pg:
        url = pg.create_database("scenario")
        home = init_home(tmp / "plane")
        port = free_port()
        with home.config_file.open("a") as fh:
            fh.write(f'database_url = "{url}"\nbroker_url = "mqtts://127.0.0.1:{port}"\n')
        store = Store.open(url)
        groups: dict[str, list[str]] = {}
        ca = home.load_ca()
        for group, n in sizes.items():
            groups[group] = [f"{group}-{i:03d}" for i in range(n)]
            for d in groups[group]:
                creds = ca.issue_device(d)
                store.add_device(d, fingerprint(creds.cert_pem), {"group": group, "fleet": "a"})
                creds.write(home.devices, d)
        # the broker's ACL names every registered device (as `cloud device add` keeps it)
        conf = _broker_config(home, tmp / "broker", port)
        with run_mosquitto(conf, port=port) as broker:
            behaviour = Behaviour(versions=dict(VERSIONS))
            plane = PlaneProcess(home, tmp / "plane.log").start()
            fleet = SimFleet(
                home.devices, home.ca_cert, port, behaviour, ("pendulum", "", 0), period_s
            )
            w = World(home, store, plane, fleet, behaviour, groups, tmp, broker.log)
            try:
                fleet.add([d for ids in groups.values() for d in ids], timeout=300)
                w.bundle(1)
                # Provisioning: the whole fleet on 1.0.0, so a rollback has a bundle to go to.
                first = w.admin().CreateRollout(
                    admin_pb2.CreateRolloutRequest(
                        bundle=common_pb2.BundleRef(name="pendulum", version="1.0.0"),
                        label_selector="fleet=a",
                        health_window_s=300,
                    ),
                    timeout=30,
                )
                w.until_state(first.id, ("completed",), 300)
                yield w
            finally:
                fleet.stop()
                w.plane.stop()
                store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with make_world(tmp_path_factory.mktemp("scenario"), GROUPS) as w:
        yield w


async def console_view(world: World, rollout_id: str, wave: int = 0) -> dict[str, Any]:
    """What the operator console's rollouts screen shows of `rollout_id`."""
    from textual.widgets import DataTable, Static

    from tests.tui.conftest import until
    from tui.app import EdgeFluxApp
    from tui.client import AdminClient, TlsFiles

    crt, key = world.home.operator_paths("admin")
    client = AdminClient(world.plane.address, TlsFiles(crt, key, world.home.ca_cert))
    app = EdgeFluxApp(client)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("f6")
            gates = lambda: str(app.screen.query_one("#rollout-gates", Static).content)  # noqa: E731
            await until(pilot, lambda: gates().startswith(rollout_id), timeout=30)
            await pilot.press("tab")  # to the waves: highlight `wave`
            app.screen.query_one("#rollout-waves", DataTable).move_cursor(row=wave)
            await until(pilot, lambda: f"wave {wave} (" in gates())

            def rows(selector: str) -> list[list[str]]:
                t = app.screen.query_one(selector, DataTable)
                return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]

            # the devices' live states come with the fleet watch, shown at the next refresh
            await until(pilot, lambda: all(r[5] != "?" for r in rows("#rollout-devices")))

            return {
                "gates": gates(),
                "waves": rows("#rollout-waves"),
                "soak": rows("#rollout-soak"),
                "devices": rows("#rollout-devices"),
            }
    finally:
        client.close()


def test_the_fleet_is_provisioned_over_mqtt(world: World) -> None:
    devices = [d for ids in world.groups.values() for d in ids]
    assert len(devices) == 50
    assert all(world.running(d) == "1.0.0" for d in devices)
    rec = world.store.get_device(devices[0])
    assert rec is not None and rec.online  # presence came through ingest


def test_a_bundle_that_misses_deadlines_is_paused_after_its_first_wave_then_rolled_back(
    world: World,
) -> None:
    r = world.create(
        "bad",
        BAD,
        wave_fractions=[0.25, 0.5, 1.0],
        soak_s=2,
        max_miss_rate_increase=0.01,
        abort_threshold=0.5,
    )
    w0, w1, w2 = (list(w.device_ids) for w in r.waves)
    # On 1.1.0 two robots of the first wave and every robot of the second miss 20 %.
    with world.behaviour.lock:
        world.behaviour.miss_rates["1.1.0"] = (0.2, frozenset(w0[:2] + w1))
    paused = world.until_state(r.id, ("paused",), 60)
    assert "wave 0 soak regressed: deadline-miss rate up" in paused.reason, paused.reason
    assert paused.waves[0].soak.startswith("soak regressed")
    assert not paused.abort  # 2 of the 5 dispatched robots regressed: below 0.5
    assert all(world.running(d) == "1.1.0" for d in w0)
    assert all(world.desired(d) == "1.0.0" for d in w1 + w2)

    shown = asyncio.run(console_view(world, r.id))
    assert "wave 0 soak regressed: deadline-miss rate up" in shown["gates"], shown
    assert shown["waves"][0][-1] == "regressed" and shown["soak"][0][0] == "wave 0: wave"
    assert float(shown["soak"][0][3]) >= 0.05  # the wave's miss rate, as the plane measured it

    world.admin().ResumeRollout(admin_pb2.RolloutId(id=r.id), timeout=30)
    aborted = world.until_state(r.id, ("aborted",), 60)
    soak = (world.store.get_rollout(r.id).status.get("gates") or {}).get("soak")  # type: ignore[union-attr]
    assert "7/10 dispatched robot(s) failed or regressed" in aborted.abort, (aborted.abort, soak)
    assert set(soak["0"]["regressed"]) == set(w0[:2]) and set(soak["1"]["regressed"]) == set(w1)
    assert "> abort threshold 0.5" in aborted.abort
    # rolled back: the plane points them at 1.0.0 again and they run it
    wait_until(
        lambda: all(world.running(d) == "1.0.0" for d in w0 + w1), 60, "the rollback to 1.0.0"
    )
    assert all(world.desired(d) == "1.0.0" for d in w0 + w1 + w2)
    assert not any(s == BAD for d in w2 for _, s, _ in world.behaviour.hints_for(d))
    history = world.history(r.id)
    assert any(h.startswith("wave 0 soak regressed") for h in history)
    assert any(h.startswith("rolled back 10 device(s)") for h in history), history
    audit = [a.action for a in world.store.audit_log(limit=5000) if a.target == r.id]
    assert audit.count("rollout.abort_threshold") == 1


def test_a_good_bundle_completes_each_wave_after_its_soak(world: World) -> None:
    ids = world.groups["good"]
    r = world.create("good", GOOD, wave_fractions=[0.3, 1.0], soak_s=2, abort_threshold=0.5)
    w0, w1 = (list(w.device_ids) for w in r.waves)
    done = world.until_state(r.id, ("completed",), 90)
    assert done.waves[0].soak.startswith("soak passed"), done.waves[0].soak
    assert all(world.running(d) == "1.2.0" for d in ids)
    # the second wave's first hint came no sooner than the soak after the first's last commit
    commits = [
        e.at.timestamp()
        for d in w0
        for e in world.store.events(d, kind="update", limit=50)
        if e.state == "COMMITTED" and (e.bundle or {}).get("version") == "1.2.0"
    ]
    first_hint = min(at for d in w1 for at, s, _ in world.behaviour.hints_for(d) if s == GOOD)
    assert first_hint - max(commits) >= 2.0 - 0.5  # the plane's clock vs the events' stamps


def test_a_wave_waits_for_approval(world: World) -> None:
    r = world.create("approval", GOOD, wave_fractions=[0.5, 1.0], approval_waves=[1])
    w0, w1 = (list(w.device_ids) for w in r.waves)
    wait_until(
        lambda: any(h.startswith("wave 1 waits for approval") for h in world.history(r.id)),
        60,
        "the driver to hold the second wave for its approval",
    )
    got = world.get(r.id)
    assert got.waves[0].state == "succeeded"
    assert got.state == "running" and got.waves[1].state == "pending"
    assert got.waves[1].approval_required and not got.waves[1].approved_by
    assert all(world.desired(d) == "1.0.0" for d in w1)
    world.admin().ApproveRollout(admin_pb2.RolloutId(id=r.id, wave=1), timeout=30)
    done = world.until_state(r.id, ("completed",), 60)
    assert done.waves[1].approved_by == "operator:admin"
    assert all(world.running(d) == "1.2.0" for d in w0 + w1)


class ApprovalEndpoint:
    """An HTTP endpoint that answers the plane's approval check: allow, or deny while
    `deny_wave` is the wave asked about."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        self.asked: list[dict[str, Any]] = []
        self.deny_wave: int | None = None
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.asked.append(body)
                deny = body.get("wave") == endpoint.deny_wave
                answer = {
                    "decision": "deny" if deny else "allow",
                    "reason": "change freeze until the shift ends" if deny else "CI is green",
                }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gate"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_wave_waits_for_an_external_check_that_denies_then_allows(world: World) -> None:
    endpoint = ApprovalEndpoint()
    endpoint.deny_wave = 1
    try:
        r = world.create(
            "external", GOOD, wave_fractions=[0.5, 1.0], soak_s=1, approval_url=endpoint.url
        )
        w1 = list(r.waves[1].device_ids)

        def denied() -> bool:
            return (
                world.get(r.id)
                .waves[1]
                .approval_check.startswith("denied by the approval check: change freeze")
            )

        wait_until(denied, 60, "the external check to deny the second wave")
        got = world.get(r.id)
        assert got.waves[0].state == "succeeded" and got.waves[1].state == "pending"
        assert all(world.desired(d) == "1.0.0" for d in w1)
        endpoint.deny_wave = None
        done = world.until_state(r.id, ("completed",), 90)
        assert done.waves[1].approval_check.startswith("allowed by the approval check: CI")
        assert all(world.running(d) == "1.2.0" for d in world.groups["external"])
        # the endpoint was told the wave and the soak before it
        second = [a for a in endpoint.asked if a["wave"] == 1]
        assert len(second) >= 2 and second[-1]["soak"]["verdict"] == "passed", second[-1]
        assert second[-1]["rollout"] == r.id and second[-1]["bundle"]["version"] == "1.2.0"
    finally:
        endpoint.close()


def test_a_robot_added_to_the_label_mid_rollout_gets_the_bundle(world: World) -> None:
    (spare,) = world.groups["spare"]
    # the driver looks for newcomers on its full passes (every 5 s): a soak longer than that
    r = world.create("dynamic", GOOD, wave_fractions=[0.5, 1.0], soak_s=7)
    assert spare not in {d for w in r.waves for d in w.device_ids}
    wait_until(
        lambda: world.get(r.id).waves[0].soak.startswith("soaking until"),
        60,
        "the first wave's soak",
    )
    world.store.set_labels(spare, {"group": "dynamic", "fleet": "a"})
    wait_until(
        lambda: any(spare in w.joined for w in world.get(r.id).waves), 30, "the robot to join"
    )
    done = world.until_state(r.id, ("completed",), 90)
    joined = [d for w in done.waves for d in w.joined]
    assert joined == [spare], [list(w.joined) for w in done.waves]
    assert world.running(spare) == "1.2.0" and world.desired(spare) == "1.2.0"
    assert all(world.running(d) == "1.2.0" for d in world.groups["dynamic"])


def test_held_robots_stage_and_switch_only_once_released(world: World) -> None:
    locked, outside = world.groups["held"]
    with world.behaviour.lock:
        world.behaviour.holds[locked] = ("UPDATE_LOCKED", "held by 'picking' (mid-task), 9m left")
        world.behaviour.holds[outside] = (
            "OUTSIDE_WINDOW",
            "outside maintenance window 'night'; opens at 2026-12-07T22:00:00Z",
        )
    r = world.create("held", GOOD, wave_fractions=[1.0])

    def held() -> bool:
        return all(
            (rec := world.store.get_device(d)) is not None and rec.update_state == "HELD"
            for d in (locked, outside)
        )

    wait_until(held, 60, "both robots to report their held switch")
    for d, reason in ((locked, "UPDATE_LOCKED"), (outside, "OUTSIDE_WINDOW")):
        dev = world.admin().GetDevice(admin_pb2.GetDeviceRequest(id=d), timeout=30)
        assert dev.update_state == "HELD" and dev.update_reason == reason, dev
        states = [e.state for e in world.store.events(d, kind="update", limit=50)]
        assert "STAGING" in states and "SHADOWING" in states  # downloaded and staged
        assert world.running(d) == "1.0.0"  # not switched

    def listed() -> bool:
        return {o.device_id for o in world.get(r.id).waves[0].held} == {locked, outside}

    wait_until(listed, 30, "the plane to list both robots as held")
    got = world.get(r.id)
    assert got.state == "running" and got.waves[0].failed == 0  # a hold is no failure
    held = {o.device_id: o for o in got.waves[0].held}
    assert held[locked].reason_code == "UPDATE_LOCKED" and "picking" in held[locked].detail
    assert held[outside].reason_code == "OUTSIDE_WINDOW"
    shown = asyncio.run(console_view(world, r.id, wave=0))
    live = {row[0]: row for row in shown["devices"]}
    assert live[locked][1] == "HELD" and live[locked][4] == "HELD (UPDATE_LOCKED)"
    assert live[outside][1] == "HELD" and live[outside][4] == "HELD (OUTSIDE_WINDOW)"
    assert f"held {locked}: UPDATE_LOCKED: held by 'picking'" in shown["gates"]

    with world.behaviour.lock:
        del world.behaviour.holds[outside]  # the window opened
    wait_until(lambda: world.running(outside) == "1.2.0", 60, "the window's robot to switch")
    assert world.running(locked) == "1.0.0" and world.get(r.id).state == "running"
    with world.behaviour.lock:
        del world.behaviour.holds[locked]  # the integrator released the lock
    world.until_state(r.id, ("completed",), 60)
    assert world.running(locked) == "1.2.0"


def test_a_failing_robot_is_retried_with_backoff(world: World) -> None:
    ids = world.groups["retry"]
    flaky = ids[0]
    world.behaviour.fail_tries[flaky] = 1
    r = world.create(
        "retry", GOOD, wave_fractions=[1.0], max_tries=3, retry_base_s=5, retry_max_s=5
    )
    done = world.until_state(r.id, ("completed",), 90)
    wave = done.waves[0]
    assert wave.failed == 0 and wave.committed == len(ids)
    (retried,) = wave.retries
    assert retried.device_id == flaky and retried.tries == 2
    assert retried.reason_code == "DOWNLOAD_FAILED"
    hints = sorted((at, g) for at, s, g in world.behaviour.hints_for(flaky) if s == GOOD)
    assert len({g for _, g in hints}) == 2  # a new generation for the second try
    gap = hints[-1][0] - hints[0][0]
    assert 2.5 - 0.5 <= gap <= 5 + 3, gap  # base 5 s, half of it jitter; plus a driver pass
    assert all(world.running(d) == "1.2.0" for d in ids)


def test_the_plane_killed_during_a_soak_carries_the_rollout_on_once(world: World) -> None:
    ids = world.groups["restart"]
    r = world.create("restart", GOOD, wave_fractions=[0.3, 1.0], soak_s=6)
    w0, w1 = (list(w.device_ids) for w in r.waves)

    def soaking() -> bool:
        return world.get(r.id).waves[0].soak.startswith("soaking until")

    wait_until(soaking, 60, "the first wave's soak to start")
    world.plane.kill()
    world.plane = PlaneProcess(world.home, world.tmp / "plane-2.log").start()
    done = world.until_state(r.id, ("completed",), 90)
    assert done.waves[0].soak.startswith("soak passed")
    assert all(world.running(d) == "1.2.0" for d in ids)
    history = world.history(r.id)
    assert sum(h.startswith("wave 0 soak passed") for h in history) == 1, history
    # each robot was pointed at 1.2.0 once: one desired generation per robot
    for d in w0 + w1:
        gens = {g for _, s, g in world.behaviour.hints_for(d) if s == GOOD}
        assert len(gens) == 1, (d, gens)


def test_an_unattested_bundle_is_refused_before_its_first_wave(world: World) -> None:
    with pytest.raises(grpc.RpcError) as err:
        world.create("unattested", UNATTESTED, wave_fractions=[0.5, 1.0])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "parity attestation gate: missing: pendulum 1.3.0" in (err.value.details() or "")
    for d in world.groups["unattested"]:
        assert world.desired(d) == "1.0.0" and world.running(d) == "1.0.0"
        assert not any(s == UNATTESTED for _, s, _ in world.behaviour.hints_for(d))


@pytest.mark.slow
def test_a_large_fleet_through_four_soaked_waves_and_a_killed_plane(tmp_path: Path) -> None:
    """The same fleet at a larger size: four waves with a soak each but the last, a bad
    robot per wave that the soak names, and the plane killed during the second soak."""
    n = slow_budget(full=300, ci=100)
    with make_world(tmp_path, {"big": n}, period_s=1.0) as world:
        ids = world.groups["big"]
        world.bundle(BAD)
        r = world.create(
            "big",
            BAD,
            wave_fractions=[0.1, 0.3, 0.6, 1.0],
            soak_s=3,
            max_miss_rate_increase=0.05,
            abort_threshold=0.2,
        )
        waves = [list(w.device_ids) for w in r.waves]
        flaky = {w[0] for w in waves}  # one robot per wave misses 20 % on the new bundle
        with world.behaviour.lock:
            world.behaviour.miss_rates["1.1.0"] = (0.2, frozenset(flaky))

        def soaking(k: int) -> bool:
            return world.get(r.id).waves[k].soak.startswith("soaking until")

        wait_until(lambda: soaking(1), 240, "the second wave's soak")
        world.plane.kill()
        world.plane = PlaneProcess(world.home, world.tmp / "plane-2.log").start()
        done = world.until_state(r.id, ("completed",), 600)
        assert all(done.waves[k].soak.startswith("soak passed") for k in range(3))
        assert all(world.running(d) == "1.1.0" for d in ids)
        gates = world.store.get_rollout(r.id).status.get("gates") or {}  # type: ignore[union-attr]
        for k in range(3):  # each soak named its bad robot and was decided once
            assert gates["soak"][str(k)]["regressed"] == [waves[k][0]], gates["soak"][str(k)]
        history = world.history(r.id)
        for k in range(3):
            assert sum(h.startswith(f"wave {k} soak passed") for h in history) == 1
        for d in ids:
            gens = {g for _, s, g in world.behaviour.hints_for(d) if s == BAD}
            assert len(gens) == 1, (d, gens)
