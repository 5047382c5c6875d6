"""Configuration loading: precedence, and errors that name field, value and source."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from runtime.config import ConfigError, load_config


class Control(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate_hz: float = Field(50.0, gt=0)
    deadline_ms: float = 10.0


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Path("/")
    threads: int = Field(1, ge=1)
    control: Control = Control()


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgeflux.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_given() -> None:
    cfg = load_config(DemoConfig, "runtime", env={})
    assert cfg.threads == 1 and cfg.control.rate_hz == 50.0


def test_precedence_toml_then_env_then_cli(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[runtime]\nthreads = 2\n[runtime.control]\nrate_hz = 100\n")
    cfg = load_config(DemoConfig, "runtime", toml_path=path, env={})
    assert (cfg.threads, cfg.control.rate_hz) == (2, 100.0)
    env = {"EDGEFLUX_RUNTIME_THREADS": "3", "EDGEFLUX_RUNTIME_CONTROL__RATE_HZ": "250"}
    cfg = load_config(DemoConfig, "runtime", toml_path=path, env=env)
    assert (cfg.threads, cfg.control.rate_hz) == (3, 250.0)
    cfg = load_config(
        DemoConfig, "runtime", toml_path=path, env=env, overrides={"threads": 4, "root": None}
    )
    assert cfg.threads == 4 and cfg.root == Path("/")


def test_bad_env_value_names_field_value_and_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DemoConfig, "runtime", env={"EDGEFLUX_RUNTIME_CONTROL__RATE_HZ": "fast"})
    msg = str(info.value)
    assert "runtime.control.rate_hz" in msg
    assert "'fast'" in msg
    assert "EDGEFLUX_RUNTIME_CONTROL__RATE_HZ" in msg


def test_bad_toml_value_names_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[runtime]\nthreads = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(DemoConfig, "runtime", toml_path=path, env={})
    assert str(path) in str(info.value) and "runtime.threads = 0" in str(info.value)


def test_bad_cli_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"command line --control-rate-hz"):
        load_config(DemoConfig, "runtime", env={}, overrides={"control.rate_hz": -1})


def test_typo_in_toml_is_an_error_not_ignored(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[runtime]\nthraeds = 2\n")
    with pytest.raises(ConfigError, match=r"runtime.thraeds = 2 .*unknown setting"):
        load_config(DemoConfig, "runtime", toml_path=path, env={})


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(DemoConfig, "runtime", toml_path=_toml(tmp_path, "[runtime\n"), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DemoConfig, "runtime", toml_path=tmp_path / "nope.toml", env={})
