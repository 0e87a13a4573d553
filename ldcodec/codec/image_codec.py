"""The user-facing codec: image -> ``.ldc`` bytes -> image.

Ties together input preparation, the transforms, the reproducible entropy
parameters and the container. The analysis/synthesis transforms may run in
bf16 or on a GPU; the entropy parameters never do (see entropy_parameters).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldcodec.bitstream import container
from ldcodec.bitstream.container import ColorMode, Header, SectionTag, Stream
from ldcodec.bitstream.entropy_coding import decode_hyper_latents, encode_hyper_latents
from ldcodec.codec.allocator import keep_large_allocations
from ldcodec.codec.diffusion_weights import diffusion_path_for
from ldcodec.codec.entropy_parameters import Z_RADIUS
from ldcodec.codec.latent_coding import LatentCoder
from ldcodec.codec.residual_synthesis import synthesis_reach
from ldcodec.codec.tiling import DEFAULT_TILE, SYNTHESIS_MARGIN, analyse_tiled, synthesise_tiled
from ldcodec.codec.image_io import decode_alpha, encode_alpha, finish_image, prepare_image
from ldcodec.codec.precision import resolve_precision
from ldcodec.codec.transforms import HYPER_STRIDE, freeze_gdn, synthesis_transform
from ldcodec.codec.weights import LoadedWeights, load_weights
from ldcodec.errors import BitstreamError, InputImageError, LdcodecError, ModelMismatchError, NoDiffusionDecoderError


@dataclass
class StreamInfo:
    """What a stream's header says, plus its size."""

    model_id: str
    weights_hash: str
    format_version: int
    width: int
    height: int
    mode: str
    quality: float
    bytes: int
    bpp: float
    sections: dict[str, int]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def stream_info(blob: bytes, max_pixels: int = container.DEFAULT_MAX_PIXELS) -> StreamInfo:
    """Parse a stream (all CRCs checked) and describe it, without decoding pixels."""
    stream = container.parse(blob, max_pixels)
    h = stream.header
    return StreamInfo(
        model_id=h.model_id, weights_hash=h.weights_hash.hex(), format_version=h.version,
        width=h.width, height=h.height, mode=h.mode.name, quality=round(h.quality, 6),
        bytes=len(blob), bpp=8.0 * len(blob) / (h.width * h.height),
        sections={tag.name.lower(): len(p) for tag, p in stream.sections.items()},
    )


def _pad_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return rgb
    # Edge replication (unlike reflection) works for any size, 1×1 included.
    return np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")


class ImageCodec:
    """Encode images to ``.ldc`` bytes and decode them back.

    ``precision`` ("auto", "fp32" or "bf16"; auto = bf16 where the hardware has it natively)
    and ``device`` apply to the transforms only;
    streams are interchangeable between all settings. ``tile`` (in latents, 16
    pixels each; 0 = whole image) bounds the transforms' memory on large images.
    ``diffusion`` is the diffusion decoder's weights file (default: the
    ``<base>-diffusion.safetensors`` beside the base weights); it is loaded only
    when a decode first asks for steps > 0.
    """

    def __init__(self, weights: LoadedWeights, device: str | torch.device = "cpu", precision: str = "auto",
                 max_pixels: int = container.DEFAULT_MAX_PIXELS, tile: int = DEFAULT_TILE,
                 diffusion: str | Path | None = None):
        if tile < 0:
            raise ValueError("tile must be >= 0")
        self.tile = tile
        keep_large_allocations()  # full-resolution buffers reused, not page-faulted in anew each time
        self.weights = weights
        self.model_id = weights.model_id
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.max_pixels = max_pixels
        # The entropy-parameter path keeps its own float32, contiguous CPU copies.
        self._latent_coder = LatentCoder(weights.model)
        self.model = weights.model.to(self.device).eval()
        # The image transforms run channels_last: oneDNN's fastest CPU kernels, and the
        # ones whose results do not depend on the thread count (docs/robustness.md).
        for transform in (self.model.g_a, self.model.g_s):
            freeze_gdn(transform)
            transform.to(memory_format=torch.channels_last)
        self._prior_table = weights.prior_table.cpu().numpy()
        self._latent_channels = weights.model.config.latent_channels
        self._hyper_channels = weights.model.config.channels
        if diffusion is None and weights.path is not None:
            diffusion = diffusion_path_for(weights.path)
        self.diffusion_path = Path(diffusion) if diffusion is not None else None
        self._denoiser = None  # loaded on first use (steps > 0)
        self._diffusion_synthesis = None  # the diffusion file's fine-tuned g_s, if it has one

    @property
    def has_diffusion_decoder(self) -> bool:
        """Whether a diffusion weights file exists for this model (it is not loaded here)."""
        return self.diffusion_path is not None and self.diffusion_path.is_file()

    def _diffusion_denoiser(self):
        if self._denoiser is None:
            if not self.has_diffusion_decoder:
                raise NoDiffusionDecoderError(f"no diffusion decoder for model {self.model_id!r}; use steps=0")
            from ldcodec.codec.diffusion_weights import load_denoiser

            # a fresh g_s as the template of the file's fine-tuned one (the codec's own has frozen GDNs)
            template = synthesis_transform(self.weights.model.config.channels, self._latent_channels)
            loaded = load_denoiser(self.diffusion_path, self.weights.sha256, self._latent_channels,
                                   base_synthesis=template)
            self._denoiser = loaded.denoiser.to(self.device).float().eval()
            self._denoiser.to(memory_format=torch.channels_last)  # ~7 % faster UNet steps on CPU
            if self.precision == "bf16":
                self._denoiser.cast_for_inference(torch.bfloat16)  # ~20 % faster UNet steps on CPU
            if loaded.synthesis is not None:
                self._diffusion_synthesis = loaded.synthesis.to(self.device).eval()
                freeze_gdn(self._diffusion_synthesis)
                self._diffusion_synthesis.to(memory_format=torch.channels_last)
        return self._denoiser

    def _synthesis_for(self, steps: int):
        """Latents -> pixels: the base g_s at steps 0, the fine-tuned one (if shipped) after diffusion."""
        if steps == 0 or self._diffusion_synthesis is None:
            return self.model.synthesise  # the distortion-optimal path, unchanged
        g_s = self._diffusion_synthesis

        def synthesise(part: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
            return g_s(part * self.model.gain.inverse_gain(quality).to(part.dtype))

        return synthesise

    # Encoding ---------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _tile_for(self, height: int, width: int) -> int:
        return self.tile or max(height, width, 1)

    def _analyse_latents(self, rgb: np.ndarray) -> torch.Tensor:
        rgb = _pad_to_multiple(rgb, HYPER_STRIDE)
        with torch.inference_mode(), self._autocast():
            return analyse_tiled(self.model.g_a, rgb, self.device, self._tile_for(*rgb.shape[:2]))

    def _code_at_quality(self, y: torch.Tensor, quality_code: int) -> tuple[bytes, bytes]:
        quality = torch.tensor([quality_code / 65535.0], dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            y_g = y * self.model.gain.gain(quality)
            with self._autocast():
                z = self.model.h_a(y_g)
        z_sym = torch.clamp(torch.round(z.float()), -Z_RADIUS, Z_RADIUS)[0].cpu().numpy().astype(np.int32)
        y_np = y_g[0].float().cpu().numpy().astype(np.float64)
        return (encode_hyper_latents(z_sym + Z_RADIUS, self._prior_table),
                self._latent_coder.encode(y_np, z_sym))

    def _assemble(self, prepared, quality_code: int, z_bytes: bytes, y_bytes: bytes) -> bytes:
        header = Header(model_id=self.model_id, weights_hash=self.weights.sha256[: container.HASH_BYTES],
                        width=prepared.width, height=prepared.height, mode=prepared.mode,
                        quality_code=quality_code)
        sections = {SectionTag.HYPER_LATENTS: z_bytes, SectionTag.LATENTS: y_bytes}
        if prepared.alpha is not None:
            sections[SectionTag.ALPHA] = encode_alpha(prepared.alpha)
        return container.serialize(Stream(header=header, sections=sections))

    def encode(self, image, quality: float | None = None, bpp: float | None = None) -> bytes:
        """Compress ``image`` (PIL image, uint8 array H×W / H×W×3 / H×W×4, or path).

        Give ``quality`` in [0, 1] (default 0.5), or ``bpp``: the highest quality whose
        whole stream stays within that many bits per pixel (bisection on quality).
        """
        if quality is not None and bpp is not None:
            raise ValueError("give quality or bpp, not both")
        if quality is not None and not 0.0 <= float(quality) <= 1.0:  # NaN fails too
            raise InputImageError(f"quality must be in [0, 1], got {quality}")
        if bpp is not None and not (bpp > 0 and math.isfinite(bpp)):
            raise InputImageError(f"target bpp must be a positive number, got {bpp}")
        prepared = prepare_image(image)
        if prepared.width * prepared.height > self.max_pixels:
            raise InputImageError(f"image of {prepared.width}x{prepared.height} exceeds the limit of "
                                  f"{self.max_pixels} pixels")
        if max(prepared.width, prepared.height) > container.MAX_SIDE:
            raise InputImageError(f"image sides must be at most {container.MAX_SIDE} pixels")
        y = self._analyse_latents(prepared.rgb)

        def build(code: int) -> bytes:
            return self._assemble(prepared, code, *self._code_at_quality(y, code))

        if bpp is None:
            return build(Header.quality_to_code(0.5 if quality is None else quality))
        return self._search_bpp(build, bpp, prepared.width * prepared.height)

    @staticmethod
    def _search_bpp(build, target_bpp: float, pixels: int) -> bytes:
        """Bisection on the 16-bit quality code: largest code whose stream fits the target."""
        budget = target_bpp * pixels / 8.0
        lo, hi = 0, 65535
        best = build(lo)
        if len(best) > budget:  # even the lowest quality is over budget: the closest we can do
            warnings.warn(f"target {target_bpp} bpp is below the lowest rate of this model for this image "
                          f"({8 * len(best) / pixels:.4f} bpp at quality 0); using quality 0", stacklevel=3)
            return best
        top = build(hi)
        if len(top) <= budget:
            if len(top) < 0.9 * budget:  # more than 10 % short: say so, as for a target below the range
                warnings.warn(f"target {target_bpp} bpp is above the highest rate of this model for this image "
                              f"({8 * len(top) / pixels:.4f} bpp at quality 1); using quality 1", stacklevel=3)
            return top
        while hi - lo > 64:
            mid = (lo + hi) // 2
            blob = build(mid)
            if len(blob) <= budget:
                lo, best = mid, blob
            else:
                hi = mid
        return best

    # Decoding ---------------------------------------------------------------------------
    def _check_model(self, header: Header) -> None:
        if header.model_id != self.model_id or header.weights_hash != self.weights.sha256[: container.HASH_BYTES]:
            raise ModelMismatchError(
                f"stream needs model {header.model_id!r} (weights {header.weights_hash.hex()}); this codec has "
                f"{self.model_id!r} (weights {self.weights.sha256[:container.HASH_BYTES].hex()})"
            )

    def decode_latents(self, blob: bytes) -> tuple[Stream, np.ndarray]:
        """Entropy-decode a stream to the dequantized gained latents ŷ (float64, C×H×W)."""
        stream = container.parse(blob, self.max_pixels)
        self._check_model(stream.header)
        h = stream.header
        ph, pw = -(-h.height // HYPER_STRIDE), -(-h.width // HYPER_STRIDE)
        z_sym = decode_hyper_latents(stream.sections[SectionTag.HYPER_LATENTS], self._prior_table,
                                     (self._hyper_channels, ph, pw)) - Z_RADIUS
        return stream, self._latent_coder.decode(stream.sections[SectionTag.LATENTS], z_sym)

    def decode(self, blob: bytes, steps: int = 0, seed: int = 0, sampler: str = "dpmpp",
               start: str = "matched") -> Image.Image:
        """Reconstruct the image.

        ``steps`` 0 is the distortion-optimal decode. ``steps`` 1..8 run the diffusion
        decoder from ŷ with ``sampler`` ("ddim" or "dpmpp") from the ``start``
        ("matched": the quantization noise level; "noise": pure noise); the noise is
        drawn from ``seed``, so the same stream and seed give the same pixels.
        """
        if steps < 0:
            raise LdcodecError("steps must be >= 0")
        if steps > 0:
            from ldcodec.codec.latent_diffusion import check_options

            check_options(steps, sampler, start)
            denoiser = self._diffusion_denoiser()
        stream, y_hat = self.decode_latents(blob)
        h = stream.header
        alpha = decode_alpha(stream.sections[SectionTag.ALPHA], h.width, h.height) if h.mode.has_alpha else None
        quality = torch.tensor([h.quality], dtype=torch.float32, device=self.device)
        y = torch.from_numpy(y_hat.astype(np.float32))[None].to(self.device)
        if steps > 0:
            y = self._diffuse(denoiser, y, quality, steps, seed, sampler, start)
        rgb = np.empty((h.height, h.width, 3), dtype=np.uint8)
        with torch.inference_mode(), self._autocast():
            synthesise = self._synthesis_for(steps)
            margin = SYNTHESIS_MARGIN + (synthesis_reach(self._diffusion_synthesis) if steps > 0 else 0)
            synthesise_tiled(lambda part: synthesise(part, quality), y, rgb, self._tile_for(*y.shape[2:]), margin)
        return finish_image(rgb, h.mode, alpha)

    def _diffuse(self, denoiser, y: torch.Tensor, quality: torch.Tensor, steps: int, seed: int, sampler: str,
                 start: str) -> torch.Tensor:
        """Gained latents ŷ -> gained latents after ``steps`` diffusion steps (in latent space)."""
        from ldcodec.codec.latent_diffusion import sample_latents

        with torch.inference_mode(), self._autocast():
            inverse_gain = self.model.gain.inverse_gain(quality).float()
            x = sample_latents(denoiser, denoiser.normalise(y, inverse_gain), quality,
                               float(denoiser.quantization_sigma(inverse_gain)[0]), steps, seed, sampler, start)
            return denoiser.denormalise(x, inverse_gain).contiguous()


def load(model: str | Path | None = None, device: str = "cpu", precision: str = "auto",
         max_pixels: int = container.DEFAULT_MAX_PIXELS, tile: int = DEFAULT_TILE,
         diffusion: str | Path | None = None) -> ImageCodec:
    """The codec with the shipped weights (no network). ``model`` is an id or a .safetensors path.

    ``diffusion``: the diffusion decoder's weights (default: beside the model's); loaded lazily.
    """
    return ImageCodec(load_weights(model), device=device, precision=precision, max_pixels=max_pixels, tile=tile,
                      diffusion=diffusion)
