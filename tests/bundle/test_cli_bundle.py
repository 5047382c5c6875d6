"""`edgeflux bundle ...` from the command line a user would type (through the real root)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from click.testing import CliRunner, Result

from edgeflux.cli import root
from tests.bundle.conftest import make_policy

BOUNDS = ["--obs-low", "-1", "--obs-high", "1", "--action-low", "-2", "--action-high", "2"]
CONTROL = ["--rate-hz", "50", "--deadline-ms", "5"]


def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(root, ["bundle", *map(str, args)], env=env)


def ok(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    result = run(*args, env=env)
    assert result.exit_code == 0, result.output
    return result


def refused(*args: str | Path, fragment: str, code: int = 1) -> Result:
    result = run(*args)
    assert result.exit_code == code, result.output
    assert fragment in result.output, result.output
    assert "Traceback" not in result.output
    return result


def test_full_flow_keygen_create_sign_trust_verify_pack_inspect_unpack(tmp_path: Path) -> None:
    policy = make_policy(tmp_path / "p.onnx")
    kid = ok("keygen", "--private", tmp_path / "k.pem", "--public", tmp_path / "k.pub", "--json")
    key_id = json.loads(kid.stdout)["key_id"]
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    bdir = tmp_path / "pendulum-1.0.0"
    ok("create", "--onnx", policy, "--name", "pendulum", "--version", "1.0.0",
       "--sequence", "4", "--out", bdir, *BOUNDS, *CONTROL)  # fmt: skip
    ok("sign", bdir, "--key", tmp_path / "k.pem")
    trust = tmp_path / "trust"
    added = ok("trust", "add", tmp_path / "k.pub", "--trust-dir", trust)
    assert added.stdout.strip() == key_id
    listed = json.loads(ok("trust", "list", "--trust-dir", trust, "--json").stdout)
    assert listed == [{"role": "models", "key_id": key_id}]

    verified = json.loads(ok("verify", bdir, "--trust-dir", trust, "--json").stdout)
    assert verified["ok"] and verified["signer_key_id"] == key_id and verified["sequence"] == 4

    efb = tmp_path / "pendulum.efb"
    packed = json.loads(ok("pack", bdir, "--out", efb, "--json").stdout)
    assert packed["length"] == efb.stat().st_size
    counters = tmp_path / "ar.json"
    from_efb = json.loads(
        ok("verify", efb, "--trust-dir", trust, "--counters", counters, "--json").stdout
    )
    assert from_efb["root_digest"] == verified["root_digest"]
    assert "anti_rollback" in from_efb["checked"]
    assert not counters.exists(), "verify must only read the counters, never advance them"

    report = json.loads(ok("inspect", efb, "--trust-dir", trust, "--json").stdout)
    assert report["signer_key_id"] == key_id and report["verified"] is True
    assert report["manifest"]["io"]["inputs"][0]["name"] == "obs"
    assert set(report["files"]) == {"policy.onnx", "edgeflux.json"}
    table = ok("inspect", bdir).stdout
    assert "pendulum" in table and "policy.onnx" in table and "I/O spec" in table

    ok("unpack", efb, "--out", tmp_path / "staged")
    ok("verify", tmp_path / "staged", "--trust-dir", trust)

    ok("trust", "remove", key_id[:12], "--trust-dir", trust)
    refused("verify", bdir, "--trust-dir", trust, fragment="no model-signing keys are trusted")


def test_create_takes_bounds_and_control_from_a_spec_toml(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        "sequence = 7\n"
        "[io]\nobs_low = [-1.0, -1.0, -8.0]\nobs_high = [1.0, 1.0, 8.0]\n"
        "action_low = [-2.0, -2.0]\naction_high = [2.0, 2.0]\n"
        "[control]\nrate_hz = 100\ndeadline_ms = 2\nfallback = 'zero'\n"
        "[provenance]\nenv_id = 'Pendulum-v1'\n"
    )
    out = tmp_path / "b"
    ok("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "pendulum",
       "--version", "1.2.0", "--spec", spec, "--out", out, "--rate-hz", "50")  # fmt: skip
    manifest = json.loads((out / "edgeflux.json").read_text())
    assert manifest["sequence"] == 7
    assert manifest["control"]["rate_hz"] == 50  # the flag wins over the file
    assert manifest["control"]["fallback"] == "zero"
    assert manifest["io"]["obs_high"] == [1.0, 1.0, 8.0]
    assert manifest["provenance"]["env_id"] == "Pendulum-v1"


def test_create_refuses_a_spec_that_contradicts_the_graph(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        "[io]\nobs_low = [-1.0]\nobs_high = [1.0]\naction_low = [-2.0, -2.0]\n"
        "action_high = [2.0, 2.0]\n[control]\nrate_hz = 50\ndeadline_ms = 5\n"
    )
    out = tmp_path / "b"
    refused("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "p",
            "--version", "1.0.0", "--spec", spec, "--out", out,
            fragment="has 3 elements per row but io.obs_low/obs_high have 1")  # fmt: skip
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_create_with_wrong_bound_count_is_a_usage_error(tmp_path: Path) -> None:
    refused("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "p",
            "--version", "1.0.0", "--out", tmp_path / "b", *CONTROL,
            "--obs-low", "-1,-1", "--obs-high", "1", "--action-low", "-2", "--action-high", "2",
            fragment="needs 1 or 3 values, got 2", code=2)  # fmt: skip


def test_create_without_bounds_names_every_missing_setting_at_once(tmp_path: Path) -> None:
    res = refused("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "p",
                  "--version", "1.0.0", "--out", tmp_path / "b", "--rate-hz", "50",
                  fragment="needs 5 more settings")  # fmt: skip
    for name in ("--obs-low", "--obs-high", "--action-low", "--action-high", "--deadline-ms"):
        assert name in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_create_with_nothing_lists_everything_it_needs(tmp_path: Path) -> None:
    res = refused("create", fragment="needs 10 more settings")
    for name in ("--onnx", "--out", "--name", "--version", "--obs-low", "--rate-hz"):
        assert name in res.output


def test_create_defaults_to_distills_fallback_and_takes_the_normaliser(tmp_path: Path) -> None:
    out = tmp_path / "b"
    ok("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "p", "--version",
       "1.0.0", "--out", out, *BOUNDS, *CONTROL, "--obs-mean", "0,0.5,0",
       "--obs-std", "2")  # fmt: skip
    manifest = json.loads((out / "edgeflux.json").read_text())
    assert manifest["control"]["fallback"] == "zero"
    assert manifest["io"]["obs_mean"] == [0.0, 0.5, 0.0]
    assert manifest["io"]["obs_std"] == [2.0, 2.0, 2.0]


def test_the_documented_spec_template_makes_a_bundle(tmp_path: Path) -> None:
    template = Path(__file__).parents[2] / "examples" / "bundle-spec.toml"
    out = tmp_path / "b"
    policy = make_policy(tmp_path / "p.onnx", act_dim=1)
    ok("create", "--onnx", policy, "--spec", template, "--out", out)
    manifest = json.loads((out / "edgeflux.json").read_text())
    assert manifest["name"] == "pendulum" and manifest["control"]["rate_hz"] == 20


def test_a_typo_in_the_spec_is_named(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text("nmae = 'p'\n[control]\nrate_hz = 5\nfallbak = 'zero'\n")
    refused("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--spec", spec,
            "--out", tmp_path / "b", fragment="unknown keys nmae, control.fallbak")  # fmt: skip
    assert not (tmp_path / "b").exists()


def test_verify_names_a_missing_path_and_a_plain_file(tmp_path: Path) -> None:
    res = refused("verify", tmp_path / "nope", "--trust-dir", tmp_path, fragment="no such bundle")
    assert "model.sig" not in res.output
    plain = tmp_path / "policy.onnx"
    plain.write_bytes(b"x")
    refused("verify", plain, "--trust-dir", tmp_path, fragment="is a plain file, not a bundle")
    refused("verify", tmp_path / "nope", "--home", tmp_path, fragment="not a control-plane home")


def test_create_rejects_bad_semver(tmp_path: Path) -> None:
    refused("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "p",
            "--version", "v1", "--out", tmp_path / "b", *BOUNDS, *CONTROL,
            fragment="is not semver")  # fmt: skip


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    ok("keygen", "--private", tmp_path / "k.pem", "--public", tmp_path / "k.pub")
    before = (tmp_path / "k.pem").read_bytes()
    refused("keygen", "--private", tmp_path / "k.pem", "--public", tmp_path / "x.pub",
            fragment="refusing to overwrite")  # fmt: skip
    assert (tmp_path / "k.pem").read_bytes() == before


def test_encrypted_key_signs_with_passphrase_and_fails_without(tmp_path: Path) -> None:
    env = {"EF_PASS": "correct horse"}
    ok("keygen", "--private", tmp_path / "k.pem", "--public", tmp_path / "k.pub",
       "--passphrase-env", "EF_PASS", env=env)  # fmt: skip
    assert b"ENCRYPTED" in (tmp_path / "k.pem").read_bytes()
    bdir = tmp_path / "b"
    ok("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "p", "--version",
       "1.0.0", "--out", bdir, *BOUNDS, *CONTROL)  # fmt: skip
    refused("sign", bdir, "--key", tmp_path / "k.pem", fragment="give the passphrase")
    assert not (bdir / "model.sig").exists()
    ok("sign", bdir, "--key", tmp_path / "k.pem", "--passphrase-env", "EF_PASS", env=env)
    assert (bdir / "model.sig").exists()


def test_verify_failure_exits_non_zero_with_the_error_type(tmp_path: Path) -> None:
    bdir = tmp_path / "b"
    ok("keygen", "--private", tmp_path / "k.pem", "--public", tmp_path / "k.pub")
    ok("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "p", "--version",
       "1.0.0", "--out", bdir, *BOUNDS, *CONTROL)  # fmt: skip
    ok("sign", bdir, "--key", tmp_path / "k.pem")
    ok("trust", "add", tmp_path / "k.pub", "--trust-dir", tmp_path / "t")
    (bdir / "extra.txt").write_text("x")
    refused("verify", bdir, "--trust-dir", tmp_path / "t", fragment="BundleFileSetError")


def test_trust_add_rejects_a_non_key_and_wrong_role_kind(tmp_path: Path) -> None:
    (tmp_path / "junk.pub").write_text("not a key")
    refused("trust", "add", tmp_path / "junk.pub", "--trust-dir", tmp_path / "t",
            fragment="not a PEM public key")  # fmt: skip
    ok("keygen", "--private", tmp_path / "k.pem", "--public", tmp_path / "k.pub")
    refused("trust", "add", tmp_path / "k.pub", "--role", "attestation", "--trust-dir",
            tmp_path / "t", fragment="takes Ed25519 public keys")  # fmt: skip


def test_create_sets_safe_fallback_and_action_delta_from_flags(tmp_path: Path) -> None:
    out = tmp_path / "b"
    ok("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "p", "--version",
       "1.0.0", "--out", out, *BOUNDS, *CONTROL, "--fallback", "safe",
       "--safe-action", "0.5,-0.5", "--max-action-delta", "0.1")  # fmt: skip
    control = json.loads((out / "edgeflux.json").read_text())["control"]
    assert control["fallback"] == "safe" and control["safe_action"] == [0.5, -0.5]
    assert control["max_action_delta"] == 0.1


def test_keygen_encrypt_prompts_twice_for_the_passphrase(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        root,
        ["bundle", "keygen", "--private", str(tmp_path / "k.pem"), "--public",
         str(tmp_path / "k.pub"), "--encrypt"],
        input="s3cret\ns3cret\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert b"ENCRYPTED" in (tmp_path / "k.pem").read_bytes()


def test_inspect_of_a_directory_that_is_not_a_bundle_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("hi")
    refused("inspect", tmp_path / "d", fragment="edgeflux.json: missing")


def test_verify_json_reports_a_refusal_as_data(tmp_path: Path) -> None:
    bdir = tmp_path / "b"
    ok("keygen", "--private", tmp_path / "k.pem", "--public", tmp_path / "k.pub")
    ok("create", "--onnx", make_policy(tmp_path / "p.onnx"), "--name", "p", "--version",
       "1.0.0", "--out", bdir, *BOUNDS, *CONTROL)  # fmt: skip
    ok("sign", bdir, "--key", tmp_path / "k.pem")
    ok("trust", "add", tmp_path / "k.pub", "--trust-dir", tmp_path / "t")
    with (bdir / "policy.onnx").open("ab") as fh:
        fh.write(b"\x00")
    result = run("verify", bdir, "--trust-dir", tmp_path / "t", "--json")
    assert result.exit_code == 1
    failure = json.loads(result.stdout)
    assert failure["ok"] is False and failure["reason"] == "digest"
    assert failure["error"] == "BundleDigestError" and "policy.onnx" in failure["message"]
