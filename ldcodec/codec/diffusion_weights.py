"""Diffusion-decoder weights: a separate safetensors file bound to its base weights.

``<base>-diffusion.safetensors`` sits beside the base model's weights file. Its
metadata holds the denoiser's config and the SHA-256 of the base weights it was
trained on: the denoiser learned *those* latents, so it is refused with any other
base model (a retrained base changes the latent space silently otherwise).

The file may also carry a *perceptual synthesis*: a copy of the base model's g_s
fine-tuned (MSE + LPIPS) on the denoiser's outputs, stored under ``synthesis.*``, possibly
with residual blocks (:mod:`ldcodec.codec.residual_synthesis`; their positions in the metadata).
Decodes with steps > 0 use it; steps 0 always uses the base g_s, so the
distortion-optimal decode and the bitstream never change.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ldcodec.codec.residual_synthesis import (blocks_from_metadata, blocks_metadata, plain_layers, stage_from_metadata,
                                              with_residual_blocks)
from ldcodec.codec.weights import save_safetensors_atomically
from ldcodec.errors import LdcodecError

if TYPE_CHECKING:  # diffusers is imported only when a denoiser is built (keeps steps=0 light)
    from ldcodec.codec.denoiser import LatentDenoiser

FORMAT = "ldcodec-diffusion/1"
SUFFIX = "-diffusion"
SYNTHESIS_PREFIX = "synthesis."


class DiffusionWeightsError(LdcodecError):
    """A diffusion weights file is unreadable or belongs to other base weights."""


@dataclass
class LoadedDenoiser:
    denoiser: "LatentDenoiser"
    path: Path
    metadata: dict
    #: The fine-tuned synthesis transform for steps > 0, or None (then the base g_s is used).
    synthesis: nn.Module | None = None


def diffusion_path_for(base_path: str | Path) -> Path:
    """Where the diffusion decoder of the base weights file ``base_path`` lives."""
    base_path = Path(base_path)
    return base_path.with_name(f"{base_path.stem}{SUFFIX}.safetensors")


def is_diffusion_file(path: str | Path) -> bool:
    return Path(path).stem.endswith(SUFFIX)


#: Tensors kept in float32 in the file; everything else is stored as float16 (half the size,
#: ~1e-3 relative rounding), and loaded back into float32 modules.
FLOAT32_TENSORS = ("latent_scale",)


def _cpu_tensors(module: nn.Module, prefix: str = "") -> dict:
    def stored(name: str, value):
        value = value.detach().cpu().float()
        return value if name in FLOAT32_TENSORS else value.half()

    return {prefix + k: stored(k, v).contiguous().clone() for k, v in module.state_dict().items()}


def export_denoiser(denoiser: "LatentDenoiser", path: str | Path, base_sha256: bytes, base_model_id: str,
                    info: dict | None = None, synthesis: nn.Module | None = None) -> Path:
    """Write ``denoiser`` (and a fine-tuned ``synthesis``, if given) as a diffusion weights file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _cpu_tensors(denoiser)
    if synthesis is not None:
        tensors.update(_cpu_tensors(synthesis, SYNTHESIS_PREFIX))
    metadata = {
        "format": FORMAT,
        "config": denoiser.config.to_json(),
        "base_model_id": base_model_id,
        "base_sha256": base_sha256.hex(),
        "training": json.dumps(info or {}),
        "storage": "float16 (latent_scale float32)",
        **blocks_metadata(synthesis),
    }
    return save_safetensors_atomically(tensors, path, metadata)


def read_metadata(path: str | Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise DiffusionWeightsError(f"diffusion weights {path}: unreadable ({exc})") from None


def load_denoiser(path: str | Path, base_sha256: bytes | None, latent_channels: int,
                  base_synthesis: nn.Module | None = None) -> LoadedDenoiser:
    """Load the denoiser in ``path``, refusing one trained on other base weights.

    ``base_sha256`` None accepts any base with the same latent shape: only for a
    starting point of training (a decoder never decodes with such weights).
    ``base_synthesis``: the base model's g_s, the template of the fine-tuned synthesis
    the file may hold (without it, such a synthesis is not loaded).
    """
    path = Path(path)
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT:
        raise DiffusionWeightsError(f"{path} is not a diffusion weights file")
    if base_sha256 is not None and metadata.get("base_sha256") != base_sha256.hex():
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
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise DiffusionWeightsError(f"diffusion weights {path}: unreadable ({exc})") from None
    synthesis_state = {k[len(SYNTHESIS_PREFIX):]: v for k, v in tensors.items() if k.startswith(SYNTHESIS_PREFIX)}
    synthesis = None
    try:
        blocks = blocks_from_metadata(metadata)
        stage = stage_from_metadata(metadata)
    except ValueError as exc:
        raise DiffusionWeightsError(f"diffusion weights {path.name}: {exc}") from None
    try:
        denoiser.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(SYNTHESIS_PREFIX)})
        if synthesis_state and base_synthesis is not None:
            # The file records every block (and latent stage) of its synthesis: build them on the base's plain layers.
            synthesis = with_residual_blocks(copy.deepcopy(plain_layers(base_synthesis)), blocks, stage).cpu().float()
            synthesis.load_state_dict(synthesis_state)
            synthesis.eval()
    except (RuntimeError, ValueError) as exc:
        raise DiffusionWeightsError(f"diffusion weights {path.name} do not match their config "
                                    "or their base model") from exc
    denoiser.eval()
    return LoadedDenoiser(denoiser=denoiser, path=path, metadata=metadata, synthesis=synthesis)

