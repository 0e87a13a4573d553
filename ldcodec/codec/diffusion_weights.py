"""Diffusion-decoder weights: a separate safetensors file bound to its base weights.

``<base>-diffusion.safetensors`` sits beside the base model's weights file. Its
metadata holds the denoiser's config and the SHA-256 of the base weights it was
trained on: the denoiser learned *those* latents, so it is refused with any other
base model (a retrained base changes the latent space silently otherwise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open
from safetensors.torch import load_file

from ldcodec.codec.weights import save_safetensors_atomically
from ldcodec.errors import LdcodecError

if TYPE_CHECKING:  # diffusers is imported only when a denoiser is built (keeps steps=0 light)
    from ldcodec.codec.denoiser import LatentDenoiser

FORMAT = "ldcodec-diffusion/1"
SUFFIX = "-diffusion"


class DiffusionWeightsError(LdcodecError):
    """A diffusion weights file is unreadable or belongs to other base weights."""


@dataclass
class LoadedDenoiser:
    denoiser: "LatentDenoiser"
    path: Path
    metadata: dict


def diffusion_path_for(base_path: str | Path) -> Path:
    """Where the diffusion decoder of the base weights file ``base_path`` lives."""
    base_path = Path(base_path)
    return base_path.with_name(f"{base_path.stem}{SUFFIX}.safetensors")


def is_diffusion_file(path: str | Path) -> bool:
    return Path(path).stem.endswith(SUFFIX)


def export_denoiser(denoiser: "LatentDenoiser", path: str | Path, base_sha256: bytes, base_model_id: str,
                    info: dict | None = None) -> Path:
    """Write ``denoiser`` as a diffusion weights file (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous().clone() for k, v in denoiser.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": denoiser.config.to_json(),
        "base_model_id": base_model_id,
        "base_sha256": base_sha256.hex(),
        "training": json.dumps(info or {}),
    }
    return save_safetensors_atomically(tensors, path, metadata)


def read_metadata(path: str | Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise DiffusionWeightsError(f"diffusion weights {path}: unreadable ({exc})") from None


def load_denoiser(path: str | Path, base_sha256: bytes, latent_channels: int) -> LoadedDenoiser:
    """Load the denoiser in ``path``, refusing one trained on other base weights."""
    path = Path(path)
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT:
        raise DiffusionWeightsError(f"{path} is not a diffusion weights file")
    if metadata.get("base_sha256") != base_sha256.hex():
        raise DiffusionWeightsError(
            f"diffusion weights {path.name} were trained on base weights {metadata.get('base_sha256', '?')[:16]}, "
            f"not on these ({base_sha256.hex()[:16]})")
    from ldcodec.codec.denoiser import DenoiserConfig, LatentDenoiser

    config = DenoiserConfig.from_json(metadata["config"])
    if config.latent_channels != latent_channels:
        raise DiffusionWeightsError(f"diffusion weights {path.name} have {config.latent_channels} latent channels, "
                                    f"the base model {latent_channels}")
    denoiser = LatentDenoiser(config)
    try:
        denoiser.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise DiffusionWeightsError(f"diffusion weights {path.name} do not match their config") from exc
    denoiser.eval()
    return LoadedDenoiser(denoiser=denoiser, path=path, metadata=metadata)

