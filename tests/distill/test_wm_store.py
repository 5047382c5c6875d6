"""The saved-model directory: round trip for every family, one-line refusals, and
distillation that starts from one and records its digest in the bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.errors import CheckpointError
from distill.wm_registry import load_family
from distill.wm_store import from_pretrained, load_world_model, save_pretrained, weights_format
from distill.world_model import TDMPC2Model, WorldModelConfig, save_checkpoint
from edgeflux.cli import root
from tests.distill.test_wm_families import _install_plugin

SMALL = WorldModelConfig(latent_dim=16, mlp_dim=32, enc_dim=32, batch_size=16, activation="silu")
TINY = ["--eval-episodes", "2", "--rounds", "2", "--envs-per-round", "2", "--epochs", "2",
        "--mppi-samples", "32", "--mppi-iterations", "2"]  # fmt: skip


def _model(seed: int = 0) -> TDMPC2Model:
    torch.manual_seed(seed)
    return TDMPC2Model(3, 1, SMALL)


def test_round_trip_keeps_family_config_weights_and_the_checkpoint_digest(tmp_path: Path) -> None:
    m = _model()
    digest = save_pretrained(m, tmp_path / "wm", "Pendulum-v1", {"env_seeds": [1, 2]})
    # The digest is the model's content digest: the same as the single-file checkpoint's.
    assert digest == m.digest() == save_checkpoint(m, tmp_path / "wm.pt", "Pendulum-v1")
    back, meta = from_pretrained(tmp_path / "wm", obs_dim=3, action_dim=1)
    assert isinstance(back, TDMPC2Model) and back.digest() == digest
    assert meta["family"] == "tdmpc2" and meta["env_id"] == "Pendulum-v1"
    assert meta["extra"] == {"env_seeds": [1, 2]} and meta["config"]["latent_dim"] == 16
    fmt = weights_format()
    names = {"safetensors": "weights.safetensors", "torch": "weights.pt"}
    assert sorted(p.name for p in (tmp_path / "wm").iterdir()) == ["config.json", names[fmt]]
    assert load_world_model(tmp_path / "wm.pt")[0].digest() == digest  # a file still loads


def test_a_plugin_family_saves_and_loads_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path, monkeypatch)
    fam = load_family("mlp-dynamics")
    torch.manual_seed(0)
    m = fam.build(3, 1, {"hidden": 8})
    digest = save_pretrained(m, tmp_path / "wm", "Pendulum-v1")
    back, meta = from_pretrained(tmp_path / "wm")
    assert back.family == "mlp-dynamics" and back.digest() == digest
    assert meta["config"]["hidden"] == 8


def _saved(tmp_path: Path) -> Path:
    d = tmp_path / "wm"
    if not d.exists():
        save_pretrained(_model(), d, "Pendulum-v1")
    return d


def _edit(d: Path, **changes: object) -> None:
    meta = json.loads((d / "config.json").read_text())
    meta.update(changes)
    (d / "config.json").write_text(json.dumps(meta))


BAD = {
    "no directory": (lambda d: shutil.rmtree(d), "no such saved world-model directory"),
    "no config": (lambda d: (d / "config.json").unlink(), "no config.json; not a saved world"),
    "not json": (lambda d: (d / "config.json").write_text("{"), "config.json: not readable JSON"),
    "format": (lambda d: _edit(d, format="v0"), "format is not 'edgeflux.world-model-dir/v1'"),
    "family": (lambda d: _edit(d, family="dreamer9"), "no world-model family named 'dreamer9'"),
    "dims": (lambda d: _edit(d, obs_dim=True), "field 'obs_dim' must be a int"),
    "weights missing": (
        lambda d: [p.unlink() for p in d.glob("weights.*")],
        "No such file or directory",
    ),
    "weights changed": (
        lambda d: [p.write_bytes(p.read_bytes()[:-1] + b"x") for p in d.glob("weights.*")],
        "does not match the sha256 in config.json",
    ),
    "digest": (lambda d: _edit(d, digest="sha256:00"), "do not match the recorded digest"),
    "config": (
        lambda d: _edit(
            d, config={**json.loads((d / "config.json").read_text())["config"], "latent_dim": 24}
        ),
        "weights do not fit the stored tdmpc2 config",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_directory_is_refused_in_one_line_naming_what_is_wrong(
    tmp_path: Path, case: str
) -> None:
    d = _saved(tmp_path)
    spoil, message = BAD[case]
    spoil(d)
    with pytest.raises(CheckpointError) as err:
        from_pretrained(d, obs_dim=3, action_dim=1)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_model_for_other_dimensions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="with obs_dim 3, but the environment has obs_dim 17"):
        from_pretrained(_saved(tmp_path), obs_dim=17, action_dim=6)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(["format", "family", "obs_dim", "action_dim", "config", "weights",
                              "digest", "env_id", "extra"]), value=_json)  # fmt: skip
def test_any_json_in_any_field_is_a_checkpoint_error_or_loads(
    tmp_path: Path, field: str, value: object
) -> None:
    d = _saved(tmp_path)
    original = (d / "config.json").read_text()
    try:
        _edit(d, **{field: value})
        try:
            from_pretrained(d, obs_dim=3, action_dim=1)
        except CheckpointError as exc:
            assert "\n" not in str(exc)
    finally:
        (d / "config.json").write_text(original)


def test_distill_run_from_a_saved_model_records_its_digest_in_the_bundle(tmp_path: Path) -> None:
    m = _model()
    m.set_generator(torch.Generator().manual_seed(0))
    digest = save_pretrained(m, tmp_path / "wm", "Pendulum-v1", {"env_seeds": [5, 6]})
    res = CliRunner().invoke(root, ["distill", "run", "--teacher", "world-model",
                                    "--wm-checkpoint", str(tmp_path / "wm"),
                                    "--out", str(tmp_path / "o"), "--json", *TINY])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["world_model_digest"] == digest
    assert summary["world_model_family"] == "tdmpc2"
    manifest = json.loads((tmp_path / "o" / "pendulum-v1-0.1.0" / "edgeflux.json").read_text())
    assert manifest["provenance"]["world_model_digest"] == digest
    assert manifest["provenance"]["world_model_seeds"] == [5, 6]


def test_distill_run_from_a_bad_directory_or_family_is_one_line(tmp_path: Path) -> None:
    d = _saved(tmp_path)
    _edit(d, digest="sha256:00")
    res = CliRunner().invoke(root, ["distill", "run", "--teacher", "world-model",
                                    "--wm-checkpoint", str(d), "--out", str(tmp_path / "o"),
                                    *TINY])  # fmt: skip
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"Error: {d}: weights do not match the recorded digest" in res.output
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(root, ["distill", "run", "--teacher", "world-model", "--wm-family",
                                    "nope", "--out", str(tmp_path / "o"), *TINY])  # fmt: skip
    assert res.exit_code == 1 and "no world-model family named 'nope'" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_plugin_family_trains_and_distils_through_distill_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path, monkeypatch)
    res = CliRunner().invoke(root, ["distill", "run", "--teacher", "world-model",
                                    "--wm-family", "mlp-dynamics", "--wm-steps", "400",
                                    "--wm-seed-steps", "200", "--wm-envs", "1", "--wm-utd", "0.1",
                                    "--out", str(tmp_path / "o"), "--json", *TINY])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    model, meta = from_pretrained(tmp_path / "o" / "world_model", obs_dim=3, action_dim=1)
    assert meta["family"] == summary["world_model_family"] == "mlp-dynamics"
    manifest = json.loads((tmp_path / "o" / "pendulum-v1-0.1.0" / "edgeflux.json").read_text())
    assert manifest["provenance"]["world_model_digest"] == model.digest()
    assert manifest["provenance"]["world_model_seeds"] == meta["extra"]["env_seeds"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_write_that_fails_midway_leaves_the_previous_model_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    d = _saved(tmp_path)
    before = _tree(tmp_path)
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd: int) -> None:  # the disk fills after the weights are written
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(CheckpointError, match="No space left on device; the previous model"):
        save_pretrained(_model(seed=1), d, "Pendulum-v1")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _tree(tmp_path) == before  # no temporary directory, no changed byte
    assert from_pretrained(d)[0].digest() == _model().digest()


def test_a_failed_rename_into_place_puts_the_previous_model_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    d = _saved(tmp_path)
    before = _tree(tmp_path)
    real_rename = os.rename

    def rename(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == d and ".tmp-" in str(src):
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(CheckpointError, match="Input/output error"):
        save_pretrained(_model(seed=1), d, "Pendulum-v1")
    assert _tree(tmp_path) == before
    assert from_pretrained(d)[0].digest() == _model().digest()


def test_saving_replaces_a_model_whole_and_refuses_a_directory_that_is_not_one(
    tmp_path: Path,
) -> None:
    d = _saved(tmp_path)
    new = _model(seed=1)
    assert save_pretrained(new, d, "Pendulum-v1") == new.digest()
    assert from_pretrained(d)[0].digest() == new.digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wm"]  # nothing left beside it
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a saved world model"):
        save_pretrained(new, other, "Pendulum-v1")
    assert _tree(other) == {"todo.txt": b"keep me"}


def test_weights_are_safetensors_and_a_directory_with_torch_weights_still_loads(
    tmp_path: Path,
) -> None:
    import hashlib
    import io

    from safetensors.torch import load

    d = _saved(tmp_path)
    meta = json.loads((d / "config.json").read_text())
    assert meta["weights"]["format"] == "safetensors"
    assert set(load((d / "weights.safetensors").read_bytes())) == set(_model().state_dict())
    # A directory written before safetensors: weights.pt in torch's tensor format.
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in _model().state_dict().items()}, buf)
    (d / "weights.safetensors").unlink()
    (d / "weights.pt").write_bytes(buf.getvalue())
    meta["weights"] = {"file": "weights.pt", "format": "torch",
                       "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}  # fmt: skip
    (d / "config.json").write_text(json.dumps(meta))
    assert from_pretrained(d)[0].digest() == _model().digest()


def test_train_wm_refuses_an_out_path_it_would_not_replace_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from distill.train_wm import main

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        main(["--steps", "10", "--out", str(tmp_path / "notes")])
    assert exc.value.code == 2
    assert "is not a saved world model" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
