"""`edgeflux cloud broker-config`: what it writes and how it refuses bad input.

(Its behaviour against a real broker — ACLs, mTLS, CRL — is in test_mqtt.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cloud.broker_config import broker_config
from tests.fleet.conftest import Pki


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
    res = CliRunner().invoke(broker_config, [*_args(pki, out, "--port", "8883"), "--json"])
    assert res.exit_code == 0, res.output
    paths = json.loads(res.stdout)
    conf = Path(paths["config"]).read_text()
    for line in (
        "listener 8883 0.0.0.0",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        "max_queued_messages 100000",
    ):
        assert line in conf.splitlines()
    acl = Path(paths["acl"]).read_text().splitlines()
    assert "pattern write edgeflux/v1/devices/%u/telemetry" in acl
    assert "pattern read edgeflux/v1/devices/%u/updates" in acl
    # devices never get a wildcard grant
    assert not [ln for ln in acl if ln.startswith("pattern") and "/+/" in ln]


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
