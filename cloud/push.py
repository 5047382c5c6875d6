"""One-step push: ``edgeflux cloud push BUNDLE --device ID | --label k=v``.

1. the bundle is published (verified, signed into TUF) unless that exact version is
   already published — then the published record is reused;
2. a bundle older than the newest published one of its name is refused; each chosen
   device is planned (will update / already newer / offline, `cloud.rollouts.plan`)
   and the ones already newer are left out, with an audit entry saying why;
   the others' signed desired state is pointed at it (each device's generation
   advances; that is what the agent trusts, together with TUF);
3. an MQTT hint goes to each device's ``updates`` topic (QoS 1). A hint is only a
   nudge and carries nothing trusted. A device that missed it converges when its agent
   next polls GetDesiredState (``desired_state_poll_s``).

Staged waves and health gates are the rollout engine's job; this is the direct path.

Usage::

    edgeflux cloud push ./bundles/pendulum-1.1.0 --device robot-1 --home ./plane
    edgeflux cloud push pendulum@1.1.0 --label site=lab --home ./plane --json
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from cloud.home import PUBLISHER_IDENTITY, CloudHome, HomeError
from cloud.mqtt import HINT_EXPIRY_S, CloudMqtt, CloudMqttError, CloudMqttSettings, topic
from cloud.pki import PKIError
from cloud.publish import bundle_ref, desired_bundle
from cloud.rollouts.plan import (
    DevicePlan,
    StaleBundleError,
    check_newest,
    plan_devices,
    record_dropped,
)
from cloud.store import BundleRecord, ConflictError, Store, StoreError
from protos import telemetry_pb2
from runtime.desired_state import GatePolicy

__all__ = ["PushError", "PushResult", "push", "push_cmd", "resolve_devices"]


class PushError(Exception):
    """The push was refused; the message says why and what to do."""


@dataclass
class PushResult:
    bundle: BundleRecord
    generations: dict[str, int]
    plans: list[DevicePlan] = field(default_factory=list)
    hinted: list[str] = field(default_factory=list)
    hint_failed: dict[str, str] = field(default_factory=dict)
    rollout_id: str = ""


def resolve_devices(store: Store, device_ids: Sequence[str], labels: dict[str, str]) -> list[str]:
    """Explicit ids (each must exist and not be revoked) or everything matching `labels`."""
    if bool(device_ids) == bool(labels):
        raise PushError("give either --device (repeatable) or --label k=v (repeatable), not both")
    if device_ids:
        out = []
        for d in device_ids:
            rec = store.get_device(d)
            if rec is None:
                raise PushError(f"no device {d!r}; add it with `edgeflux cloud device add {d}`")
            if rec.revoked:
                raise PushError(f"device {d!r} is revoked; it cannot receive updates")
            out.append(d)
        return sorted(set(out))
    ids: list[str] = []
    after = ""
    while True:
        page = store.list_devices(labels, limit=1000, after=after, with_total=False)
        ids += [d.id for d in page.devices if not d.revoked]
        if not page.next_after:
            break
        after = page.next_after
    if not ids:
        sel = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        raise PushError(f"no devices match the labels {sel}; nothing was changed")
    return ids


def _resolve_bundle(home: CloudHome, store: Store, source: str) -> BundleRecord:
    """A published record for `source`: ``name@version``, or a path published now."""
    from cloud.publish import PublishError, publish_bundle

    if "@" in source and not Path(source).exists():
        name, _, version = source.partition("@")
        rec = store.get_bundle(name, version)
        if rec is None:
            raise PushError(f"bundle {name} {version} is not published; publish it or pass a path")
        return rec
    path = Path(source)
    if not path.exists():
        raise PushError(f"{source} is neither a bundle path nor name@version of a published one")
    try:
        return publish_bundle(home, store, path, actor="push")
    except ConflictError as exc:
        existing = _published_twin(store, path)
        if existing is None:
            raise PushError(str(exc)) from exc
        return existing
    except PublishError as exc:
        raise PushError(str(exc)) from exc


def _published_twin(store: Store, path: Path) -> BundleRecord | None:
    """The published record of the same name and version as the bundle at `path`."""
    from runtime.manifest import load_manifest

    try:
        if path.is_dir():
            m = load_manifest(path / "edgeflux.json")
        else:
            import tempfile

            from runtime.bundle import unpack_bundle

            with tempfile.TemporaryDirectory() as tmp:
                m = load_manifest(unpack_bundle(path, Path(tmp) / "b") / "edgeflux.json")
    except Exception:
        return None
    return store.get_bundle(m.name, m.version)


Hinter = Callable[[str, bytes], bool]


def push(
    home: CloudHome,
    store: Store,
    source: str,
    *,
    device_ids: Sequence[str] = (),
    labels: dict[str, str] | None = None,
    hint: Hinter | None = None,
    actor: str = "push",
    gate: GatePolicy | None = None,
) -> PushResult:
    """Publish (if needed), set desired state, hint. `hint(topic, payload)` -> acked."""
    targets = resolve_devices(store, device_ids, labels or {})
    rec = _resolve_bundle(home, store, source)
    try:
        check_newest(store, rec)
    except StaleBundleError as exc:
        raise PushError(str(exc)) from exc
    ref = bundle_ref(rec)
    plans = plan_devices(store, targets, ref)
    record_dropped(store, plans, ref, actor)
    receivers = [p.device_id for p in plans if p.receives]
    if not receivers:
        raise PushError(
            f"no device would take {rec.name} {rec.version} (sequence {rec.sequence}); "
            + "; ".join(f"{p.device_id} {p.outcome}: {p.detail}" for p in plans)
        )
    try:
        generations = store.set_desired(receivers, desired_bundle(rec, gate).to_dict(), actor=actor)
    except StoreError as exc:
        raise PushError(f"could not set the desired state: {exc}") from exc
    result = PushResult(rec, generations, plans, rollout_id=f"push-{int(time.time())}")
    if hint is None:
        return result
    for device_id, generation in sorted(generations.items()):
        msg = telemetry_pb2.UpdateHint(
            bundle_name=rec.name,
            sequence=rec.sequence,
            generation=generation,
            rollout_id=result.rollout_id,
        )
        try:
            ok = hint(topic(device_id, "updates"), msg.SerializeToString())
        except Exception as exc:  # the desired state stands; agents find it by polling
            ok = False
            result.hint_failed[device_id] = str(exc)
        if ok:
            result.hinted.append(device_id)
        else:
            result.hint_failed.setdefault(device_id, "no PUBACK from the broker")
    return result


def broker_settings(
    home: CloudHome, broker_url: str | None, identity: str = PUBLISHER_IDENTITY
) -> CloudMqttSettings:
    """MQTT settings for one of the plane's MQTT identities (default: the hint publisher).

    The broker makes the certificate's name the client id, so each plane client has
    its own certificate (``cloud.home.service_identity``): ingest's persistent session
    must never be taken over by a publisher connecting with a clean session.
    """
    cfg = home.config()
    url = broker_url or cfg.broker_url or f"mqtt://127.0.0.1:{cfg.embedded_broker_port}"
    u = urllib.parse.urlparse(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise PushError(f"broker URL {url!r} must look like mqtts://host:port")
    tls = u.scheme == "mqtts"
    cert = key = None
    if tls:
        try:
            cert, key = home.service_identity(identity)
        except (HomeError, PKIError) as exc:
            raise PushError(f"no MQTT certificate for {identity}: {exc}") from exc
    return CloudMqttSettings(
        host=u.hostname,
        port=u.port or (8883 if tls else 1883),
        ca=home.ca_cert if tls else None,
        cert=cert,
        key=key,
        client_id=f"edgeflux-push-{int(time.time() * 1000) % 10**9}",
    )


@click.command("push")
@click.argument("bundle")
@click.option("--device", "devices", multiple=True, help="Device id (repeatable).")
@click.option("--label", "labels", multiple=True, help="k=v label selector (repeatable).")
@click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEFLUX_CLOUD_HOME",
    default=Path("."),
    show_default=True,
)
@click.option("--broker-url", help="mqtt(s)://host:port (default: the home's broker_url).")
@click.option("--no-hint", is_flag=True, help="Only set the desired state.")
@click.option(
    "--max-action-divergence",
    type=click.FloatRange(0),
    default=None,
    help="Refuse the switch when the candidate's shadow actions differ from the active "
    "policy's by more than this (default: reported, not enforced).",
)
@click.option("--json", "as_json", is_flag=True)
def push_cmd(
    bundle: str,
    devices: tuple[str, ...],
    labels: tuple[str, ...],
    home_dir: Path,
    broker_url: str | None,
    no_hint: bool,
    max_action_divergence: float | None,
    as_json: bool,
) -> None:
    """Push BUNDLE (a path, or name@version of a published bundle) to devices now."""
    from cloud.home import HomeError
    from cloud.store import parse_label_selector

    try:
        home = CloudHome.at(home_dir)
        home.check()
    except HomeError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        selector = parse_label_selector(",".join(labels)) if labels else {}
    except ValueError as exc:
        raise click.ClickException(f"--label: {exc}") from exc
    try:
        store = Store.open(home.database_url(home.config()))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    client: CloudMqtt | None = None
    try:
        hint: Hinter | None = None
        if not no_hint:
            try:
                settings = broker_settings(home, broker_url)
                # Plain MQTT is the embedded development broker, which speaks 3.1.1 only.
                client = CloudMqtt(settings, clean_session=True, mqtt5=settings.ca is not None)
                client.start(timeout_s=10)
                mqtt = client

                def hint(t: str, payload: bytes) -> bool:
                    return mqtt.publish(t, payload, wait_s=10, expiry_s=HINT_EXPIRY_S)

            except CloudMqttError as exc:
                click.echo(
                    f"warning: {exc}; desired state is set, agents pick it up when they poll",
                    err=True,
                )
        gate = None
        if max_action_divergence is not None:
            gate = GatePolicy(max_action_divergence=max_action_divergence)
        result = push(
            home, store, bundle, device_ids=devices, labels=selector, hint=hint, gate=gate
        )
    except PushError as exc:
        raise click.ClickException(f"{exc}") from exc
    finally:
        if client is not None:
            client.stop()
        store.close()
    info: dict[str, Any] = {
        "bundle": {
            "name": result.bundle.name,
            "version": result.bundle.version,
            "sequence": result.bundle.sequence,
            "target": result.bundle.target_path,
        },
        "devices": result.generations,
        "plan": {p.device_id: {"outcome": p.outcome, "detail": p.detail} for p in result.plans},
        "hinted": result.hinted,
        "hint_failed": result.hint_failed,
        "rollout_id": result.rollout_id,
    }
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
        return
    b = result.bundle
    n = len(result.generations)
    click.echo(f"pushed {b.name} {b.version} (sequence {b.sequence}) to {n} device(s)")
    for p in result.plans:
        click.echo(f"  {p.device_id:<24} {p.outcome:<14} {p.detail}")
    if result.hint_failed:
        click.echo(f"hints not acknowledged for: {', '.join(sorted(result.hint_failed))}", err=True)
