"""Model weights: safetensors files inside the package, identified by id and hash.

A weights file holds the network's parameters, the hyper-latent prior table the
coder uses, and metadata (model id, config, training record). Streams record the
model id and the first bytes of the file's SHA-256, so a decoder can tell that it
has exactly the weights the encoder used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from ldcodec.codec.entropy_parameters import hyper_prior_table
from ldcodec.codec.model import HyperpriorModel, ModelConfig
from ldcodec.codec.release import DEFAULT_MODEL_ID  # noqa: F401 (re-exported)
from ldcodec.errors import ModelMismatchError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
PRIOR_TABLE_KEY = "hyper_prior_table"
# CompressAI's coder-table buffers: rebuilt or unused, never shipped.
_SKIPPED_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


@dataclass
class LoadedWeights:
    model: HyperpriorModel
    prior_table: torch.Tensor
    model_id: str
    sha256: bytes
    metadata: dict
    #: The file the weights came from (its diffusion decoder, if any, sits beside it).
    path: Path | None = None


def shipped_state(model: HyperpriorModel) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().float().contiguous().clone()
        for k, v in model.state_dict().items()
        if not any(s in k for s in _SKIPPED_BUFFERS)
    }


def export_weights(model: HyperpriorModel, path: str | Path, model_id: str, info: dict | None = None) -> Path:
    """Write ``model`` as a safetensors weights file (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().float().eval()
    tensors = shipped_state(model)
    tensors[PRIOR_TABLE_KEY] = hyper_prior_table(model.entropy_bottleneck).contiguous()
    metadata = {
        "format": "ldcodec-weights/1",
        "model_id": model_id,
        "config": json.dumps(model.config.to_dict()),
        "training": json.dumps(info or {}),
    }
    return save_safetensors_atomically(tensors, path, metadata)



def save_safetensors_atomically(tensors: dict, path: Path, metadata: dict) -> Path:
    """Write to a temporary file beside ``path``, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

def default_model_id() -> str:
    """The model ``load()`` uses when none is named (read at call time: tests may change it)."""
    return DEFAULT_MODEL_ID


def weights_path(model_id: str | None = None) -> Path:
    return WEIGHTS_DIR / f"{model_id or default_model_id()}.safetensors"


def available_models() -> list[str]:
    """Shipped base models (diffusion decoders, ``<base>-diffusion.safetensors``, are not models)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if not p.stem.endswith("-diffusion"))


def file_sha256(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def _read_config(path: Path) -> tuple[dict, ModelConfig]:
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if "config" not in metadata or metadata.get("format", "ldcodec-weights/1") != "ldcodec-weights/1":
        raise ModelMismatchError(f"{path} is not an ldcodec model weights file (format {metadata.get('format', '?')})")
    return metadata, ModelConfig(**json.loads(metadata["config"]))


def installed_config(model_id: str) -> ModelConfig | None:
    """The config of a shipped model (metadata only, no tensors loaded), or None if it is not installed."""
    return _read_config(weights_path(model_id))[1] if model_id in available_models() else None


def load_weights(path_or_id: str | Path | None = None) -> LoadedWeights:
    """Load a weights file by model id (shipped; None: the default model) or by path."""
    path_or_id = path_or_id or default_model_id()
    path = Path(path_or_id)
    if not path.suffix == ".safetensors":
        path = weights_path(str(path_or_id))
    if not path.is_file():
        raise ModelMismatchError(
            f"model weights {str(path_or_id)!r} are not installed (available: {', '.join(available_models()) or 'none'})"
        )
    metadata, config = _read_config(path)
    tensors = load_file(str(path))
    prior_table = tensors.pop(PRIOR_TABLE_KEY)
    model = HyperpriorModel(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not any(s in k for s in _SKIPPED_BUFFERS)]
    if missing or unexpected:
        raise ModelMismatchError(f"weights file {path} does not match the model: missing {missing}, unexpected {unexpected}")
    model.eval()
    return LoadedWeights(
        model=model,
        prior_table=prior_table,
        model_id=metadata.get("model_id", path.stem),
        sha256=file_sha256(path),
        metadata=metadata,
        path=path,
    )
