"""World-model families: one interface, a registry fed by entry points, a plugin trained
through the same trainer as the built-in family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.envs import env_spec
from distill.errors import UnknownFamilyError
from distill.mppi import MPPIConfig
from distill.train_wm import TrainConfig, train_world_model
from distill.wm_interface import TrainableWorldModel, WorldModelFamily
from distill.wm_registry import family_names, load_family, register_family
from distill.world_model import TDMPC2_FAMILY, TDMPC2Model, WorldModelConfig

REPO = Path(__file__).resolve().parents[2]
SMALL = WorldModelConfig(latent_dim=16, mlp_dim=32, enc_dim=32, batch_size=16, activation="silu")
TINY_MPPI = MPPIConfig(horizon=3, num_samples=32, iterations=2, num_elites=4, num_pi_trajs=4)


def _windows(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(4, 16, 3, generator=g), torch.rand(3, 16, 1, generator=g) * 2 - 1,
            -torch.rand(3, 16, generator=g) * 10)  # fmt: skip


def test_tdmpc2_is_the_builtin_family_and_implements_the_interface() -> None:
    fam = load_family("tdmpc2")
    assert fam is TDMPC2_FAMILY and isinstance(fam, WorldModelFamily)
    assert "tdmpc2" in family_names()
    torch.manual_seed(3)
    built = fam.build(3, 1, fam.default_config("cpu-small"))
    torch.manual_seed(3)
    direct = TDMPC2Model(3, 1, WorldModelConfig.from_dict(fam.default_config("cpu-small")))
    assert isinstance(built, TrainableWorldModel) and built.digest() == direct.digest()
    with pytest.raises(ValueError, match="unknown tdmpc2 preset 'huge'"):
        fam.default_config("huge")


def test_train_step_is_update_with_the_models_own_optimisers() -> None:
    """Differential: the interface's training step changes nothing in TD-MPC2's maths."""
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        m = TDMPC2Model(3, 1, SMALL)
        m.set_generator(torch.Generator().manual_seed(0))
        models.append(m)
    via_update, via_step = models
    opts = via_update.make_optimizers()
    for i in range(3):
        torch.manual_seed(100 + i)  # Q dropout draws from the global generator
        a = via_update.update(*_windows(i), *opts)
        torch.manual_seed(100 + i)
        b = via_step.train_step(*_windows(i))
        assert a == b
    assert via_update.digest() == via_step.digest()


def test_unknown_or_malformed_families_are_one_line_errors() -> None:
    with pytest.raises(UnknownFamilyError, match="no world-model family named 'nope'; known: "):
        load_family("nope")
    with pytest.raises(UnknownFamilyError, match="is not a world-model family"):
        register_family(object())  # type: ignore[arg-type]


def _install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `pip install` of a package declaring the entry point leaves on sys.path."""
    info = tmp_path / "site" / "world_model_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    meta = "Metadata-Version: 2.1\nName: world-model-plugin\nVersion: 0.1\n"
    (info / "METADATA").write_text(meta)
    (info / "entry_points.txt").write_text(
        "[edgeflux.world_models]\nmlp-dynamics = world_model_plugin:FAMILY\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(REPO / "examples"))


def test_example_plugin_registers_by_entry_point_and_trains_through_the_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UnknownFamilyError):
        load_family("mlp-dynamics")
    _install_plugin(tmp_path, monkeypatch)
    assert "mlp-dynamics" in family_names()
    fam = load_family("mlp-dynamics")
    assert fam.name == "mlp-dynamics"
    cfg = TrainConfig(family="mlp-dynamics", total_steps=400, seed_steps=200, num_envs=1,
                      updates_per_step=0.1, mppi=TINY_MPPI)  # fmt: skip
    torch.manual_seed(0)
    fresh = fam.build(3, 1, {**fam.default_config("cpu-small"), "discount": 0.975})
    result = train_world_model(env_spec("Pendulum-v1"), cfg, seed=0)
    assert isinstance(result.model, TrainableWorldModel) and result.model.family == "mlp-dynamics"
    assert result.steps == 400 and result.buffer.num_episodes == 2
    assert np.isfinite(result.curves["total_loss"][-1])  # 20 real updates happened
    assert result.model.digest() != fresh.digest()
    assert np.all(np.abs(result.buffer.episodes[1].actions) <= 2.0)  # planned, within bounds


def test_the_trainer_command_refuses_an_unknown_family_or_a_pt_file_for_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from distill.train_wm import main

    for argv, message in (
        (["--family", "nope"], "--family: no world-model family named 'nope'"),
        (["--family", "dreamerv3", "--out", str(tmp_path / "x.pt")], "holds tdmpc2 models only"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["--out", str(tmp_path / "wm"), "--steps", "1", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
