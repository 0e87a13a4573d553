"""Shared fixtures. Core tests use a tiny randomly initialised model (fast, and
independent of the shipped weights); a few use the shipped model."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    from ldcodec.codec.model import HyperpriorModel, ModelConfig
    from ldcodec.codec.weights import export_weights

    torch.manual_seed(0)
    model = HyperpriorModel(ModelConfig(channels=16, latent_channels=24, gain_levels=4))
    path = tmp_path_factory.mktemp("weights") / "tiny-test.safetensors"
    return export_weights(model, path, model_id="tiny-test")


@pytest.fixture(scope="session")
def tiny_checkerboard_weights(tmp_path_factory) -> Path:
    """A tiny two-pass (checkerboard) model whose context is not a no-op (random last layer)."""
    from ldcodec.codec.model import HyperpriorModel, ModelConfig
    from ldcodec.codec.weights import export_weights

    torch.manual_seed(1)
    model = HyperpriorModel(ModelConfig(channels=16, latent_channels=24, gain_levels=4, context="checkerboard"))
    torch.nn.init.normal_(model.context_model.refine[-1].weight, std=0.2)
    path = tmp_path_factory.mktemp("weights") / "tiny-checkerboard.safetensors"
    return export_weights(model, path, model_id="tiny-checkerboard")


@pytest.fixture(scope="session")
def tiny_channel_weights(tmp_path_factory) -> Path:
    """A tiny checkerboard + channel-context model (eight passes), every context a non-no-op."""
    from ldcodec.codec.model import HyperpriorModel, ModelConfig
    from ldcodec.codec.weights import export_weights

    torch.manual_seed(2)
    model = HyperpriorModel(ModelConfig(channels=16, latent_channels=24, gain_levels=4,
                                        context="checkerboard-channel"))
    torch.nn.init.normal_(model.context_model.refine[-1].weight, std=0.2)
    for net in [*model.channel_context.anchor_nets, *model.channel_context.rest_nets]:
        torch.nn.init.normal_(net.refine[-1].weight, std=0.2)
    path = tmp_path_factory.mktemp("weights") / "tiny-channel.safetensors"
    return export_weights(model, path, model_id="tiny-channel")


@pytest.fixture(scope="session")
def tiny_exact_weights(tmp_path_factory) -> Path:
    """tiny-channel's network with the exact integer parameter arithmetic and the tabulated symbol models
    (as hp-v8 and later)."""
    from ldcodec.codec.model import HyperpriorModel, ModelConfig
    from ldcodec.codec.weights import export_weights

    torch.manual_seed(2)
    model = HyperpriorModel(ModelConfig(channels=16, latent_channels=24, gain_levels=4,
                                        context="checkerboard-channel", parameter_arithmetic="exact",
                                        symbol_model="tables-v1"))
    torch.nn.init.normal_(model.context_model.refine[-1].weight, std=0.2)
    for net in [*model.channel_context.anchor_nets, *model.channel_context.rest_nets]:
        torch.nn.init.normal_(net.refine[-1].weight, std=0.2)
    path = tmp_path_factory.mktemp("weights") / "tiny-exact.safetensors"
    return export_weights(model, path, model_id="tiny-exact")


@pytest.fixture(scope="session")
def tiny_codec(tiny_weights):
    import ldcodec

    return ldcodec.load(tiny_weights)


@pytest.fixture(scope="session")
def shipped_codec():
    import ldcodec

    return ldcodec.load()


def synthetic_image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus an edge and some noise: compressible but not trivial."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = [128 + 90 * np.sin(xx / 7.0 + c) * np.cos(yy / 11.0 - c) for c in range(channels)]
    img = np.stack(base, axis=-1) + rng.normal(0, 6, (h, w, channels))
    img[: h // 2, : w // 3] = 40
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


@pytest.fixture
def image_factory():
    return synthetic_image


def ldcodec_executable() -> list[str]:
    """The installed console script next to this interpreter (falls back to PATH)."""
    candidate = Path(sys.executable).parent / "ldcodec"
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("ldcodec")
    if not found:
        pytest.fail("the ldcodec console script is not installed (pip install -e .)")
    return [found]


@pytest.fixture
def cli_env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    return env
