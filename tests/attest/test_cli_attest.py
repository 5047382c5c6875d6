"""`edgeflux attest run | get | verify | show` through the real CLI root."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.attest import statement
from cloud.attest.cli import EXIT_NOT_ATTESTED
from cloud.testing import running_plane
from edgeflux.cli import root
from runtime.bundle import create_bundle, sign_bundle, verify_bundle
from runtime.trust import TrustStore
from tests.attest.conftest import linear_pendulum_policy, pendulum_manifest

CAMPAIGN = """
[campaign]
name = "cli"
workers = 1
parity_inputs = 32

[[task]]
name = "nominal"
episodes = 4
calibration_episodes = 4
"""


def _invoke(*args: str):
    return CliRunner().invoke(root, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One real (tiny) campaign through `edgeflux attest run`, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("cli")
    with running_plane(tmp / "plane") as plane:
        home = plane.home
        src = linear_pendulum_policy(tmp / "p.onnx")
        bdir = create_bundle(src, pendulum_manifest(), tmp / "bundle")
        sign_bundle(bdir, home.key_path("model-signing", private=True))
        (tmp / "campaign.toml").write_text(CAMPAIGN)
        result = _invoke(
            "attest", "run", str(bdir), "--campaign", str(tmp / "campaign.toml"),
            "--home", str(home.root), "--workdir", str(tmp / "work"),
            "--out", str(tmp / "att.json"), "--json",
        )  # fmt: skip
        assert result.exit_code == EXIT_NOT_ATTESTED, result.output
        summary = json.loads(result.stdout)
        # While the plane runs: what `attest run --home` stored is served over gRPC.
        got = _invoke(
            "attest", "get", summary["policy_sha256"], "--home", str(home.root),
            "--server", plane.address, "--out", str(tmp / "fetched.json"), "--json",
        )  # fmt: skip
        yield {
            "tmp": tmp,
            "home": home,
            "bundle": bdir,
            "summary": summary,
            "get": got,
            "plane": plane,
        }


def test_run_signs_and_stores_an_attestation_that_get_fetches(ran) -> None:
    summary = ran["summary"]
    assert summary["verdict"] == "not_attested"  # 4 pairs < the 30-pair minimum
    assert summary["stored_in_control_plane"] is True
    # The plot lies beside the report it belongs to.
    assert summary["plot"] == str(ran["tmp"] / "att.png")
    assert (ran["tmp"] / "att.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ran["get"].exit_code == 0, ran["get"].output
    assert json.loads(ran["get"].stdout)["verdict"] == "not_attested"
    fetched = (ran["tmp"] / "fetched.json").read_bytes()
    assert fetched == (ran["tmp"] / "att.json").read_bytes()


def test_verify_reports_the_specific_refusal_offline(ran) -> None:
    trust = str(ran["home"].trust)
    res = _invoke(
        "attest", "verify", str(ran["tmp"] / "att.json"), "--trust", trust,
        "--bundle", str(ran["bundle"]), "--json",
    )  # fmt: skip
    assert res.exit_code == 1
    assert json.loads(res.stdout)["reason"] == "verdict"
    res = _invoke(
        "attest", "verify", str(ran["tmp"] / "att.json"), "--trust", trust,
        "--policy-sha256", "0" * 64, "--root-digest", "1" * 64,
    )  # fmt: skip
    assert res.exit_code == 1 and "subject_mismatch" in res.output


def test_verify_accepts_an_attested_bundle_offline(ran, tmp_path: Path) -> None:
    home = ran["home"]
    vb = verify_bundle(ran["bundle"], TrustStore(home.trust))
    now = datetime.now(UTC)
    stmt = statement.build_statement(
        policy_sha256=vb.policy_sha256,
        root_digest=vb.root_digest,
        bundle_name="pendulum",
        predicate={"verdict": "attested"},
        issued_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(days=1),
    )
    key = statement.load_key(home.key_path("attestation", private=True))
    path = tmp_path / "ok.json"
    path.write_bytes(statement.envelope_bytes(statement.sign_statement(stmt, key)))
    res = _invoke(
        "attest", "verify", str(path), "--trust", str(home.trust), "--bundle", str(ran["bundle"])
    )
    assert res.exit_code == 0, res.output
    assert res.output.startswith("valid: attested")


def test_show_prints_report_and_writes_png(ran, tmp_path: Path) -> None:
    png = tmp_path / "parity.png"
    res = _invoke(
        "attest", "show", str(ran["tmp"] / "att.json"), "--trust", str(ran["home"].trust),
        "--png", str(png),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "NOT_ATTESTED" in res.output and "min_pairs" in res.output
    assert "signature: verified" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_mistakes_get_clear_errors_without_tracebacks(ran, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[campaign]\nname='x'\n[[task]]\nname='a'\nepisodes=0\n")
    res = CliRunner().invoke(
        root,
        ["attest", "run", str(ran["bundle"]), "--campaign", str(bad), "--home",
         str(ran["home"].root)],
    )  # fmt: skip
    assert res.exit_code == 1 and "tasks.0.episodes" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(root, ["attest", "run", str(ran["bundle"]), "--campaign", str(bad)])
    assert res.exit_code == 2 and "--home" in res.output
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{}")
    res = CliRunner().invoke(root, ["attest", "show", str(garbage)])
    assert res.exit_code == 1 and "not a DSSE envelope" in res.output


def test_remote_run_executes_on_the_plane_and_is_served(ran, tmp_path: Path) -> None:
    plane = ran["plane"]
    src = linear_pendulum_policy(tmp_path / "r.onnx", gain=0.8)
    bdir = create_bundle(src, pendulum_manifest("remote"), tmp_path / "remote")
    sign_bundle(bdir, plane.home.key_path("model-signing", private=True))
    rec = plane.publish(bdir)
    args = ["attest", "run", "--remote", "remote@1.0.0", "--campaign"]
    args += [str(ran["tmp"] / "campaign.toml"), "--home", str(plane.home.root)]
    args += ["--server", plane.address, "--out", str(tmp_path / "r.json"), "--json"]
    res = _invoke(*args)
    assert res.exit_code == EXIT_NOT_ATTESTED, res.output
    summary = json.loads(res.stdout)
    assert summary["policy_sha256"] == rec.policy_sha256
    assert summary["plot"] == str(tmp_path / "r.png") and (tmp_path / "r.png").is_file()
    assert summary["verdict"] == "not_attested"
    got = _invoke(
        "attest", "get", rec.policy_sha256, "--home", str(plane.home.root),
        "--server", plane.address, "--json",
    )  # fmt: skip
    assert json.loads(got.stdout)["verdict"] == "not_attested"
    res = CliRunner().invoke(
        root, ["attest", "run", "--remote", "nope", "--campaign", str(ran["tmp"] / "campaign.toml")]
    )
    assert res.exit_code == 2 and "NAME@VERSION" in res.output


def test_get_shows_a_readable_report_and_the_raw_envelope_on_request(ran) -> None:
    digest = ran["summary"]["policy_sha256"]
    common = ["--home", str(ran["home"].root), "--server", ran["plane"].address]
    res = _invoke("attest", "get", digest, *common)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("Parity attestation: NOT_ATTESTED")
    assert "signature: verified" in res.output and "payload" not in res.output
    by_bundle = _invoke("attest", "get", str(ran["bundle"]), *common)
    assert by_bundle.exit_code == 0 and by_bundle.output == res.output
    res = CliRunner().invoke(root, ["attest", "get", "nope", *common])
    assert res.exit_code == 2 and "neither a policy sha256" in res.output
    res = _invoke("attest", "get", digest, *common, "--raw")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["payloadType"] == "application/vnd.in-toto+json"


def test_show_points_to_the_plot_beside_the_attestation(ran) -> None:
    res = _invoke("attest", "show", str(ran["tmp"] / "att.json"))
    assert res.exit_code == 0, res.output
    assert f"plot: {ran['tmp'] / 'att.png'}" in res.output


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ('env_id = "Nope-v9"', "unknown environment 'Nope-v9'"),
        ("variant = { mass = 2.0 }", "has no variant parameter 'mass'"),
        ("variant = { m = 1000.0 }", "variant m=1000.0 is outside"),
    ],
)
def test_a_task_that_cannot_be_built_is_one_line_and_writes_nothing(
    ran, tmp_path: Path, monkeypatch, task: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(CAMPAIGN + task + "\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = CliRunner().invoke(
        root, ["attest", "run", str(ran["bundle"]), "--campaign", str(bad),
               "--home", str(ran["home"].root)],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    assert expected in res.output and "task 0 ('nominal')" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_edited_campaign_of_the_same_name_does_not_collide(
    ran, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    trust = ["--trust", str(ran["home"].trust)]
    trust += ["--key", str(ran["home"].key_path("attestation", private=True))]
    first = tmp_path / "c.toml"
    first.write_text(CAMPAIGN)
    res = _invoke("attest", "run", str(ran["bundle"]), "--campaign", str(first), *trust)
    assert res.exit_code == EXIT_NOT_ATTESTED, res.output
    first.write_text(CAMPAIGN.replace("episodes = 4", "episodes = 3"))
    res = _invoke("attest", "run", str(ran["bundle"]), "--campaign", str(first), *trust)
    assert res.exit_code == EXIT_NOT_ATTESTED, res.output
    assert len(list((tmp_path / "campaigns").iterdir())) == 2
