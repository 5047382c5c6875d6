"""The saved-model directory of a world model, of any family::

    world_model/
      config.json          format, family, env_id, dimensions, the family's config,
                           the weights file's name and sha256, and the model digest
      weights.safetensors  the state dict (safetensors: tensors only, no code)
      weights.pt           ... in directories written before safetensors (torch's own
                           tensor format, still read, with weights_only)

The *digest* is the model's own content digest (its config and every tensor), the
same whichever file format holds the weights; bundle provenance records it as
``world_model_digest`` and a parity campaign finds the teacher by it. Loading
checks, in order: the directory and config.json exist and parse, the format, the
family is registered, the dimensions fit the environment, the weights file exists
and matches its sha256, the tensors fit the config, the digest matches. Each
failure is one `CheckpointError` line naming the file and what was expected.

Writing is atomic for the directory as a whole: every file goes to a temporary
directory beside the target, each is fsynced, and one rename puts the directory in
place (a previous model is moved aside first and removed after). A crash leaves the
previous model or none, never a mix of two or a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from distill.errors import CheckpointError, UnknownFamilyError
from distill.wm_interface import TrainableWorldModel
from distill.wm_registry import load_family
from runtime.atomicio import fsync_dir

__all__ = [
    "CONFIG_FILE",
    "SAVED_FORMAT",
    "check_writable",
    "from_pretrained",
    "load_world_model",
    "save_pretrained",
    "weights_format",
]

SAVED_FORMAT = "edgeflux.world-model-dir/v1"
CONFIG_FILE = "config.json"
_WEIGHTS = {"safetensors": "weights.safetensors", "torch": "weights.pt"}


def weights_format() -> str:
    """ "safetensors" when the safetensors package is importable, else "torch"
    (what this installation can read; new directories are always written as
    safetensors)."""
    return "safetensors" if importlib.util.find_spec("safetensors") else "torch"


def _encode(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    out: bytes = save(state)
    return out


def _decode(data: bytes, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "safetensors":
        from safetensors.torch import load

        loaded: dict[str, torch.Tensor] = load(data)
        return loaded
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a dictionary of tensors")
    return state


def save_pretrained(
    model: TrainableWorldModel,
    directory: str | Path,
    env_id: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write `model` as a saved-model directory (safetensors weights); returns its digest.

    The directory appears whole or not at all (see the module's docstring). An existing
    `directory` is replaced only if it is a saved model or empty; anything else is
    refused, so a mistyped path never deletes other files.
    """
    directory = Path(directory)
    if weights_format() != "safetensors":
        raise CheckpointError(
            f"could not write {directory}: saving a world model needs the safetensors "
            "package (pip install safetensors, or the edgeflux[distill] extra)"
        )
    check_writable(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = _encode(state)
    digest = model.digest()
    config = {
        "format": SAVED_FORMAT,
        "family": model.family,
        "env_id": env_id,
        "obs_dim": model.obs_dim,
        "action_dim": model.action_dim,
        "config": model.config_dict(),
        "weights": {
            "file": _WEIGHTS["safetensors"],
            "format": "safetensors",
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        "digest": digest,
        "extra": extra or {},
    }
    files = {
        _WEIGHTS["safetensors"]: data,
        CONFIG_FILE: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }
    try:
        _write_directory(directory, files)
    except OSError as exc:
        raise CheckpointError(
            f"could not write {directory}: {exc.strerror or exc}; the previous model "
            "(if any) is unchanged"
        ) from exc
    return digest


def check_writable(directory: str | Path) -> None:
    """Refuse (`CheckpointError`) a path `save_pretrained` would not replace: one that
    exists and is neither a saved world model nor an empty directory. Call it before
    training, so minutes of work are not lost to a mistyped path."""
    directory = Path(directory)
    if not directory.exists():
        return
    if directory.is_dir() and ((directory / CONFIG_FILE).is_file() or not any(directory.iterdir())):
        return
    raise CheckpointError(
        f"could not write {directory}: it exists and is not a saved world model "
        f"(no {CONFIG_FILE}); choose another path"
    )


def _write_directory(directory: Path, files: dict[str, bytes]) -> None:
    """Every file fsynced in a temporary sibling directory, then one rename into place."""
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
    old: Path | None = None
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        fsync_dir(tmp)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=parent))
            os.rename(directory, old / "model")
        try:
            os.rename(tmp, directory)
        except OSError:
            if old is not None:  # put the previous model back
                os.rename(old / "model", directory)
            raise
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not (old / "model").exists():
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)


def _field(meta: dict[str, Any], name: str, kind: type, where: Path) -> Any:
    value = meta.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CheckpointError(f"{where}: field {name!r} must be a {kind.__name__}")
    return value


def from_pretrained(
    directory: str | Path,
    *,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[TrainableWorldModel, dict[str, Any]]:
    """Load a saved-model directory; returns the model and its config.json."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such saved world-model directory")
    try:
        meta = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; not a saved world model") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != SAVED_FORMAT:
        raise CheckpointError(f"{cfg_path}: format is not {SAVED_FORMAT!r}")
    name = _field(meta, "family", str, cfg_path)
    try:
        family = load_family(name)
    except UnknownFamilyError as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from None
    dims = {k: _field(meta, k, int, cfg_path) for k in ("obs_dim", "action_dim")}
    for key, want in (("obs_dim", obs_dim), ("action_dim", action_dim)):
        if want is not None and dims[key] != want:
            raise CheckpointError(
                f"{directory}: model was trained on {meta.get('env_id')} with {key} "
                f"{dims[key]}, but the environment has {key} {want}"
            )
    config = _field(meta, "config", dict, cfg_path)
    weights = _field(meta, "weights", dict, cfg_path)
    fmt, file = weights.get("format"), weights.get("file")
    if fmt not in _WEIGHTS or file != _WEIGHTS[fmt]:
        raise CheckpointError(
            f"{cfg_path}: weights must be one of {sorted(_WEIGHTS.values())} with its format"
        )
    if fmt == "safetensors" and weights_format() != "safetensors":
        raise CheckpointError(
            f"{directory / file}: reading safetensors weights needs the safetensors package"
        )
    try:
        data = (directory / file).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{directory / file}: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != weights.get("sha256"):
        raise CheckpointError(f"{directory / file}: does not match the sha256 in {CONFIG_FILE}")
    digest = _field(meta, "digest", str, cfg_path)
    try:
        state = _decode(data, fmt)
        model = family.build(dims["obs_dim"], dims["action_dim"], config)
        model.load_state_dict(state)
    except Exception as exc:  # torch/safetensors/the family raise errors of many kinds
        raise CheckpointError(
            f"{directory}: weights do not fit the stored {name} config "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    model = model.to(device)
    if model.digest() != digest:
        raise CheckpointError(f"{directory}: weights do not match the recorded digest")
    return model, meta


def load_world_model(
    path: str | Path,
    *,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[TrainableWorldModel, dict[str, Any]]:
    """A saved-model directory, or a single-file TD-MPC2 checkpoint (``*.pt``).

    Returns the model and a description with at least ``env_id``, ``digest`` and
    ``extra`` (what training recorded, e.g. the environment seeds).
    """
    if Path(path).is_dir():
        return from_pretrained(path, obs_dim=obs_dim, action_dim=action_dim, device=device)
    from distill.world_model import load_checkpoint

    model, payload = load_checkpoint(path, obs_dim=obs_dim, action_dim=action_dim, device=device)
    return model, payload
