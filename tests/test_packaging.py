"""Role extras: a robot install pulls no torch, textual or sqlalchemy; gpu never beside cpu ORT."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _project() -> dict:  # type: ignore[type-arg]
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_device_install_has_no_heavy_cloud_libraries() -> None:
    project = _project()
    device = _names(project["dependencies"]) | _names(project["optional-dependencies"]["device"])
    assert not device & {"torch", "textual", "sqlalchemy", "edgeflux"}, device


def test_gpu_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    project = _project()
    base = _names(project["dependencies"])
    gpu = _names(project["optional-dependencies"]["gpu"])
    assert "onnxruntime" not in base and "onnxruntime-gpu" not in base
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu


def test_all_extra_names_every_role() -> None:
    extras = _project()["optional-dependencies"]
    assert {"device", "gpu", "sim", "cloud", "distill", "tui", "dev", "all"} <= set(extras)
    (all_req,) = extras["all"]
    assert all(role in all_req for role in ("device", "sim", "cloud", "distill", "tui"))
