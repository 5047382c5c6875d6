"""`edgeflux flash`: turn a directory, an SSH host or an image into a robot that boots.

Usage::

    edgeflux cloud device add robot-1 --home plane --label site=lab
    edgeflux flash --device robot-1 --target dir:./robots/robot-1 \\
        --bundle ./bundles/pendulum-1.0.0 --home plane \\
        --cloud 127.0.0.1:7443 --broker mqtts://127.0.0.1:8883

The identity and trust anchors come from a control-plane home (`--home`, where
`cloud device add` left the device's certificate) or from files (`--cert/--key/--ca/
--trust-dir/--tuf-root`). The robot gets an offline wheelhouse for its platform and
Python, so it installs and runs with no network after the flash.
"""

from __future__ import annotations

import json
import platform as host_platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from protos.plane_target import TargetError, parse_addresses

__all__ = ["flash_cmd"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_table(name: str, values: dict[str, Any]) -> str:
    plain = {k: v for k, v in values.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in values.items() if isinstance(v, dict)}
    lines = [f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in plain.items())]
    for key, table in nested.items():
        lines += ["", _toml_table(f"{name}.{key}", table).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint=flag)
    return host.strip("[]"), int(port)


def _plane_addresses(value: str) -> str:
    """`--cloud`: one HOST:PORT or a comma-separated list (plane replicas), normalized."""
    try:
        parsed = parse_addresses(value)
    except TargetError:
        raise click.BadParameter(
            f"{value!r} is not HOST:PORT (or a comma-separated list of them)", param_hint="--cloud"
        ) from None
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed)


def _parse_broker(value: str) -> tuple[str, int, bool]:
    """`mqtts://h:p` or `h:p` → mTLS; `mqtt://h:p` → plain (the embedded dev broker only)."""
    tls = not value.startswith("mqtt://")
    host, port = _host_port(value.split("://", 1)[-1], "--broker")
    return host, port, tls


def _host_platform() -> str:
    machine = host_platform.machine().lower()
    return {
        "x86_64": "linux_x86_64",
        "amd64": "linux_x86_64",
        "aarch64": "linux_aarch64",
        "arm64": "linux_aarch64",
    }.get(machine, f"linux_{machine}")


def _source_tree() -> Path | None:
    import edgeflux

    root = Path(edgeflux.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def _newest_root(metadata_dir: Path) -> Path:
    roots = sorted(metadata_dir.glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
    if not roots:
        raise click.ClickException(f"no TUF root metadata in {metadata_dir}")
    return roots[-1]


def _from_home(home_dir: Path, device_id: str) -> dict[str, Any]:
    from cloud.home import CloudHome, HomeError

    home = CloudHome.at(home_dir)
    try:
        home.check()
    except HomeError as exc:
        raise click.ClickException(str(exc)) from exc
    cert, key = home.device_paths(device_id)
    if not cert.is_file() or not key.is_file():
        raise click.ClickException(
            f"unknown device id {device_id!r}: {home_dir} has no certificate for it; "
            f"run `edgeflux cloud device add {device_id} --home {home_dir}` first"
        )
    director = home.key_path("director")
    return {
        "cert_pem": cert.read_bytes(),
        "key_pem": key.read_bytes(),
        "ca_pem": home.ca_cert.read_bytes(),
        "trust_dir": home.trust,
        "tuf_root": _newest_root(home.tuf / "metadata").read_bytes(),
        "director_pub": director.read_bytes() if director.is_file() else None,
    }


def _read(path: Path | None, flag: str) -> bytes:
    if path is None:
        raise click.UsageError(f"{flag} is required without --home")
    return path.read_bytes()


@click.command("flash")
@click.option("--device", "device_id", required=True, help="The robot's device id (its CN).")
@click.option(
    "--target",
    "target_spec",
    required=True,
    help="dir:PATH | ssh://user@host[:port]/PREFIX | image:FILE.tar",
)
@click.option(
    "--bundle",
    "bundle_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The first bundle (a signed bundle directory).",
)
@click.option(
    "--cloud",
    "cloud_target",
    required=True,
    help="Control plane HOST:PORT (gRPC); several replicas: HOST:PORT,HOST:PORT.",
)
@click.option(
    "--broker",
    required=True,
    help="MQTT broker: HOST:PORT or mqtts://HOST:PORT (mTLS), mqtt://HOST:PORT (dev).",
)
@click.option(
    "--home",
    "home_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Control-plane home to take identity and trust anchors from.",
)
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--trust-dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tuf-root", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--director-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--platform",
    "target_platform",
    default=None,
    help="Robot platform: linux_x86_64 | linux_aarch64 (default: this machine's).",
)
@click.option(
    "--python",
    "target_python",
    default=None,
    help="Robot Python MAJOR.MINOR (default: this interpreter's).",
)
@click.option(
    "--extras",
    default=None,
    help="edgeflux extras for the robot (device | gpu, plus sim for the gym adapter); "
    "default: device plus what --adapter needs (gym: device,sim).",
)
@click.option(
    "--extra-wheel",
    "extra_wheels",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A local wheel to include (e.g. NVIDIA's onnxruntime-gpu for JetPack).",
)
@click.option(
    "--wheelhouse",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Use this prebuilt wheelhouse instead of building one.",
)
@click.option(
    "--no-wheelhouse",
    is_flag=True,
    help="Flash no wheelhouse (the robot already has EdgeFlux installed).",
)
@click.option(
    "--wheel-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path.home() / ".cache" / "edgeflux" / "wheelhouse",
    show_default=True,
)
@click.option("--adapter", default="gym", show_default=True, help="Runtime robot I/O adapter.")
@click.option("--adapter-option", "adapter_options", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--runtime-option",
    "runtime_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any [runtime] setting for runtime.toml (validated), e.g. warmup_runs=5.",
)
@click.option(
    "--agent-option",
    "agent_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any [agent] setting for agent.toml (validated), e.g. shadow_ticks=100.",
)
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Recorded on the robot.")
@click.option("--ssh-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite another device's identity.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def flash_cmd(
    device_id: str,
    target_spec: str,
    bundle_dir: Path,
    cloud_target: str,
    broker: str,
    home_dir: Path | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    trust_dir: Path | None,
    tuf_root: Path | None,
    director_key: Path | None,
    target_platform: str | None,
    target_python: str | None,
    extras: str | None,
    extra_wheels: tuple[Path, ...],
    wheelhouse: Path | None,
    no_wheelhouse: bool,
    wheel_cache: Path,
    adapter: str,
    adapter_options: tuple[str, ...],
    runtime_options: tuple[str, ...],
    agent_options: tuple[str, ...],
    labels: tuple[str, ...],
    ssh_key: Path | None,
    known_hosts: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Provision a robot: runtime, identity, trust anchors, first bundle, services."""
    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from edgeflux._version import __version__
    from edgeflux.provision import (
        REALTIME_DEFAULTS,
        FlashError,
        FlashMaterials,
        WheelhouseError,
        build_wheelhouse,
        check_wheelhouse,
        flash,
        parse_target,
    )
    from edgeflux.provision.extras import ExtrasError, robot_extras
    from fleet.config import AgentConfig
    from runtime.cli import parse_key_values
    from runtime.config import RuntimeConfig

    try:
        extras = robot_extras(adapter, extras)
    except ExtrasError as exc:
        raise click.UsageError(f"{exc} (nothing was written)") from exc
    console = Console(stderr=True)
    plat = target_platform or _host_platform()
    py = target_python or f"{sys.version_info.major}.{sys.version_info.minor}"
    grpc_target = _plane_addresses(cloud_target)
    mqtt_host, mqtt_port, mqtt_tls = _parse_broker(broker)
    label_map = dict(pair.split("=", 1) for pair in labels if "=" in pair)

    if home_dir is not None:
        anchors = _from_home(home_dir, device_id)
    else:
        anchors = {
            "cert_pem": _read(cert, "--cert"),
            "key_pem": _read(key, "--key"),
            "ca_pem": _read(ca, "--ca"),
            "trust_dir": trust_dir,
            "tuf_root": _read(tuf_root, "--tuf-root"),
            "director_pub": director_key.read_bytes() if director_key else None,
        }
        if trust_dir is None:
            raise click.UsageError("--trust-dir is required without --home")

    try:
        agent_given = {
            **parse_key_values(agent_options, "--agent-option"),
            "device_id": device_id,
            "mqtt_host": mqtt_host,
            "mqtt_port": mqtt_port,
            "mqtt_tls": mqtt_tls,
            "grpc_target": grpc_target,
        }
        if not mqtt_tls:
            # Plain MQTT is the embedded development broker, which speaks 3.1.1 only: an
            # MQTT 5 attempt would wait for its time-out at every start.
            agent_given.setdefault("mqtt5", False)
        runtime_given = {
            **REALTIME_DEFAULTS,
            **parse_key_values(runtime_options, "--runtime-option"),
            "adapter": adapter,
            "adapter_options": parse_key_values(adapter_options, "--adapter-option"),
        }
        agent = AgentConfig.model_validate(agent_given)
        runtime_cfg = RuntimeConfig.model_validate(runtime_given)
    except ValidationError as exc:
        raise click.ClickException(f"invalid robot configuration: {exc}") from exc
    # Write only what was chosen here; everything else keeps the robot's defaults.
    agent_values = agent.model_dump(mode="json", include=set(agent_given))
    runtime_values = runtime_cfg.model_dump(mode="json", include=set(runtime_given))
    runtime_values = {k: v for k, v in runtime_values.items() if v is not None}  # None: default

    try:
        target = parse_target(target_spec, ssh_identity=ssh_key, known_hosts=known_hosts)
        wheel_dir: Path | None = None
        if wheelhouse is not None:
            check_wheelhouse(wheelhouse, plat, py)
            wheel_dir = wheelhouse
        elif not no_wheelhouse:
            source = _source_tree()
            if source is None:
                raise click.ClickException(
                    "this EdgeFlux is not a source checkout, so it cannot build its own wheel; "
                    "pass --wheelhouse DIR (or --no-wheelhouse)"
                )
            extra_tag = extras.replace(",", "+")
            wheel_dir = wheel_cache / f"{plat}-py{py}-{extra_tag}"
            with console.status(f"building the wheelhouse for {plat} / Python {py}"):
                build_wheelhouse(
                    wheel_dir,
                    source_dir=source,
                    platform=plat,
                    python=py,
                    extras=extras,
                    version=__version__,
                    extra_wheels=extra_wheels,
                    log=lambda line: console.log(line, highlight=False),
                )
        materials = FlashMaterials(
            device_id=device_id,
            bundle_dir=bundle_dir,
            runtime_toml=_toml_table("runtime", runtime_values),
            agent_toml=_toml_table("agent", agent_values),
            wheelhouse=wheel_dir,
            extras=extras,
            edgeflux_version=__version__,
            labels=label_map,
            **anchors,
        )
        with Progress(
            TextColumn("flashing {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[files]}"),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(device_id, total=None, files="")

            def files(done: int, total: int) -> None:
                bar.update(task, files=f"{done}/{total} files")

            report = flash(
                materials,
                target,
                force=force,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                log=lambda msg: console.log(msg, highlight=False),
                files_progress=files,
            )
    except (FlashError, WheelhouseError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
    else:
        click.echo(
            f"flashed {report.device_id} → {report.target}: {report.files_written}/"
            f"{report.files_total} files written ({report.bytes_written / 1e6:.1f} MB), "
            f"bundle {report.bundle}, verified on the target in {report.seconds:.1f}s"
        )
