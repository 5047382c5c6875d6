"""`edgeflux cloud broker-config`: what it writes and how it refuses bad input.

(Its behaviour against a real broker — ACLs, mTLS, CRL — is in test_mqtt.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cloud.broker_config import broker_config
from tests.fleet.conftest import Pki


def acl_blocks(text: str) -> dict[str, list[str]]:
    """``user`` line → its ``topic`` lines."""
    blocks: dict[str, list[str]] = {}
    user = ""
    for ln in text.splitlines():
        if ln.startswith("user "):
            user = ln
            blocks[user] = []
        elif ln.startswith("topic "):
            blocks[user].append(ln)
    return blocks


def _args(pki: Pki, out: Path, *extra: str) -> list[str]:
    return [
        "--out",
        str(out),
        "--ca",
        str(pki.ca),
        "--cert",
        str(pki.server_cert),
        "--key",
        str(pki.server_key),
        *extra,
    ]


def test_writes_an_mtls_listener_with_identity_acls_and_deep_queues(
    pki: Pki, tmp_path: Path
) -> None:
    out = tmp_path / "conf"
    devices = ("--device", "robot-1", "--device", "robot-2")
    res = CliRunner().invoke(
        broker_config,
        [*_args(pki, out, "--port", "8883", *devices), "--json", "--authz", "acl-file"],
    )
    assert res.exit_code == 0, res.output
    paths = json.loads(res.stdout)
    conf = Path(paths["config"]).read_text()
    for line in (
        "listener 8883 0.0.0.0",
        "require_certificate true",
        "use_subject_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        "max_queued_messages 100000",
        "set_tcp_nodelay true",
    ):
        assert line in conf.splitlines()
    text = Path(paths["acl"]).read_text()
    blocks = acl_blocks(text)
    dev = blocks["user O=EdgeFlux fleet,OU=device,CN=robot-1"]
    assert dev == [
        "topic write edgeflux/v1/devices/robot-1/telemetry",
        "topic write edgeflux/v1/devices/robot-1/events",
        "topic write edgeflux/v1/devices/robot-1/state",
        "topic read edgeflux/v1/devices/robot-1/updates",
        "topic write edgeflux/v1/devices/robot-1/files/req",
        "topic read edgeflux/v1/devices/robot-1/files/resp",
    ]
    assert blocks["user O=EdgeFlux fleet,OU=service,CN=edgeflux-files"] == [
        "topic read edgeflux/v1/devices/+/files/req",
        "topic write edgeflux/v1/devices/+/files/resp",
    ]
    assert (
        "topic read edgeflux/v1/devices/+/telemetry"
        in (blocks["user O=EdgeFlux fleet,OU=service,CN=edgeflux-ingest"])
    )
    assert (
        "topic write edgeflux/v1/devices/+/updates"
        in (blocks["user O=EdgeFlux fleet,OU=service,CN=edgeflux-push"])
    )
    # no patterns (%u is a whole subject now), no operator, no wildcard grant for devices
    assert "pattern" not in text and "OU=operator" not in text
    for user, lines in blocks.items():
        if "OU=device" in user:
            assert not [ln for ln in lines if "/+/" in ln or "#" in ln]


def test_an_invalid_device_id_is_refused(pki: Pki, tmp_path: Path) -> None:
    for bad in ("robot/1", "+", "edgeflux-ingest"):
        res = CliRunner().invoke(broker_config, _args(pki, tmp_path / "c", "--device", bad))
        assert res.exit_code == 1 and "--device" in res.output, res.output


def test_missing_certificate_is_a_clear_error_and_writes_nothing(pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "conf"
    args = _args(pki, out)
    args[args.index("--cert") + 1] = str(tmp_path / "nope.crt")
    res = CliRunner().invoke(broker_config, args)
    assert res.exit_code == 1
    assert "--cert" in res.output and "nope.crt" in res.output and "Traceback" not in res.output
    assert not out.exists() or not any(out.iterdir())


def test_queue_limit_below_the_mosquitto_default_is_refused(pki: Pki, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        broker_config, _args(pki, tmp_path / "c", "--max-queued-messages", "10")
    )
    assert res.exit_code == 1 and "would lose QoS 1 messages" in res.output


def test_dynsec_loads_the_plugin_with_a_document_and_no_acl_file(pki: Pki, tmp_path: Path) -> None:
    from cloud.broker_dynsec import DEFAULT_PLUGIN

    plugin = tmp_path / "plugin.so"
    plugin.write_bytes(b"")  # only its path is written; the broker test loads the real one
    out = tmp_path / "conf"
    extra = ("--authz", "dynsec", "--dynsec-plugin", str(plugin), "--device", "robot-1")
    res = CliRunner().invoke(broker_config, [*_args(pki, out, *extra), "--json"])
    assert res.exit_code == 0, res.output
    paths = json.loads(res.stdout)
    conf = Path(paths["config"]).read_text().splitlines()
    assert f"plugin {plugin}" in conf and f"plugin_opt_config_file {paths['dynsec']}" in conf
    assert not [ln for ln in conf if ln.startswith("acl_file")]
    assert "require_certificate true" in conf and "use_subject_as_username true" in conf
    doc = json.loads(Path(paths["dynsec"]).read_text())
    names = [c["username"] for c in doc["clients"]]
    assert "O=EdgeFlux fleet,OU=device,CN=robot-1" in names
    assert not [n for n in names if "OU=operator" in n]
    assert Path(paths["dynsec"]).stat().st_mode & 0o077 == 0
    assert DEFAULT_PLUGIN.name == "mosquitto_dynamic_security.so"


def test_dynsec_without_the_plugin_is_refused_and_writes_nothing(pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "conf"
    extra = ("--authz", "dynsec", "--dynsec-plugin", str(tmp_path / "none.so"))
    res = CliRunner().invoke(broker_config, _args(pki, out, *extra))
    assert res.exit_code == 1 and "--dynsec-plugin" in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()
