"""The codecs an evaluation compares: classical baselines and an adapter for ldcodec.

Every codec has the same small interface so the runner can treat them alike:

* ``name`` — the curve's name in results (``jpeg``, ``hevc``, ``ldcodec``, ...);
* ``settings(points)`` — a sweep of ``points`` setting dicts, low rate first;
* ``encode(rgb, setting) -> bytes`` — the whole file, so bpp counts every header byte;
* ``decode(data) -> rgb`` — with the format's own decoder, never a cached input;
* ``label(setting)`` — a short "q=30" style text for tables.

Images are H×W×3 uint8 RGB arrays. The quality sweeps are chosen to cover about
0.05–1.0 bpp on Kodak (see ``docs/evaluation.md``); points are spread evenly in
the codec's own quality parameter over a range where its rate changes smoothly.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, features

from ldcodec.errors import LdcodecError


class CodecUnavailableError(LdcodecError):
    """A codec cannot run on this machine (library feature or program missing)."""


def _spread(low: float, high: float, points: int, geometric: bool = False, integer: bool = True) -> list:
    """Up to ``points`` distinct values from ``low`` to ``high`` inclusive.

    ``geometric`` spaces them evenly in log(v - low + span/8), denser at the low end:
    right for parameters whose rate grows about linearly with them (JPEG, WebP quality),
    so that the points come out about evenly spaced in log-rate.
    """
    if points < 1:
        raise ValueError("points must be at least 1")
    if points == 1:
        values = np.array([(low + high) / 2])
    elif geometric:
        offset = (high - low) / 8
        values = np.geomspace(offset, high - low + offset, points) + low - offset
    else:
        values = np.linspace(low, high, points)
    if integer:
        return sorted({int(round(v)) for v in values})
    return sorted({round(float(v), 4) for v in values})


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


class PillowCodec:
    """A codec Pillow encodes and decodes: ``settings`` sweep Pillow's ``quality``."""

    name = ""
    pillow_format = ""
    quality_range = (1, 95)
    geometric = False

    def settings(self, points: int) -> list[dict]:
        return [{"quality": q} for q in _spread(*self.quality_range, points, geometric=self.geometric)]

    def label(self, setting: dict) -> str:
        return f"q={setting['quality']}"

    def save_options(self, setting: dict) -> dict:
        return {"quality": setting["quality"]}

    def encode(self, rgb: np.ndarray, setting: dict) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buffer, format=self.pillow_format, **self.save_options(setting))
        return buffer.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return _to_rgb_array(image)


class JpegCodec(PillowCodec):
    """Baseline JPEG (libjpeg via Pillow), 4:2:0 by default, 4:4:4 as ``jpeg444``.

    Pillow's defaults otherwise (no Huffman optimisation, no progressive mode),
    as in CompressAI's published JPEG points, so the two can be compared.
    """

    pillow_format = "JPEG"
    quality_range = (3, 55)  # below 3 every quantizer clamps at 255: q=0..2 give the same file
    geometric = True

    def __init__(self, chroma_444: bool = False):
        self.chroma_444 = chroma_444
        self.name = "jpeg444" if chroma_444 else "jpeg"

    def save_options(self, setting: dict) -> dict:
        return {"quality": setting["quality"], "subsampling": 0 if self.chroma_444 else 2}


class WebpCodec(PillowCodec):
    """Lossy WebP (libwebp via Pillow) at its slowest, best-compressing ``method=6``."""

    name = "webp"
    pillow_format = "WEBP"
    quality_range = (0, 70)
    geometric = True

    def save_options(self, setting: dict) -> dict:
        return {"quality": setting["quality"], "method": 6}


class PillowAvifCodec(PillowCodec):
    """AVIF (libavif via Pillow ≥ 11), 4:2:0, single-threaded so timings compare."""

    name = "avif"
    pillow_format = "AVIF"
    quality_range = (0, 60)

    def save_options(self, setting: dict) -> dict:
        return {"quality": setting["quality"], "max_threads": 1}


class HeifCodec:
    """A codec pillow-heif's libheif encodes (x265 for HEVC, an AV1 encoder for AVIF)."""

    name = ""
    heif_format = "HEIF"
    quality_range = (10, 80)
    chroma = 444

    def settings(self, points: int) -> list[dict]:
        return [{"quality": q} for q in _spread(*self.quality_range, points)]

    def label(self, setting: dict) -> str:
        return f"q={setting['quality']}"

    def encoder_params(self) -> dict:
        """Extra libheif encoder parameters (``enc_params``)."""
        return {}

    def encode(self, rgb: np.ndarray, setting: dict) -> bytes:
        import pillow_heif

        heif = pillow_heif.from_pillow(Image.fromarray(rgb, "RGB"))
        buffer = io.BytesIO()
        extra = self.encoder_params()
        heif.save(buffer, format=self.heif_format, quality=setting["quality"], chroma=self.chroma,
                  **({"enc_params": extra} if extra else {}))
        return buffer.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        import pillow_heif

        return _to_rgb_array(pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True).to_pillow())


class HevcCodec(HeifCodec):
    """HEVC intra, 4:4:4, x265 through pillow-heif (libheif's defaults: preset slow, tune ssim).

    The same encoder BPG uses, but in a HEIF container (a few hundred bytes of
    header that BPG does not have, which matters at the lowest rates).
    """

    name = "hevc"
    heif_format = "HEIF"
    quality_range = (2, 42)
    #: x265 worker threads (its ``pools`` option); None: x265's default (all cores).
    threads: int | None = None

    def encoder_params(self) -> dict:
        return {} if self.threads is None else {"x265:pools": str(int(self.threads))}


class HeifAvifCodec(HeifCodec):
    """AVIF through pillow-heif, used only when Pillow itself lacks AVIF support."""

    name = "avif"
    heif_format = "AVIF"
    quality_range = (0, 60)
    chroma = 420


class BpgCodec:
    """BPG (Fabrice Bellard's ``bpgenc``/``bpgdec``, x265, 4:4:4), when they are on PATH.

    ``settings`` sweep the quantizer ``qp`` (0–51, lower is better), high qp first
    so the sweep runs low rate first like the others.
    """

    name = "bpg"
    qp_range = (24, 47)

    def __init__(self, encoder: str = "bpgenc", decoder: str = "bpgdec"):
        self.encoder = encoder
        self.decoder = decoder

    def settings(self, points: int) -> list[dict]:
        return [{"qp": qp} for qp in reversed(_spread(*self.qp_range, points))]

    def label(self, setting: dict) -> str:
        return f"qp={setting['qp']}"

    def encode(self, rgb: np.ndarray, setting: dict) -> bytes:
        with tempfile.TemporaryDirectory(prefix="ldcodec-bpg-") as tmp:
            source, target = Path(tmp) / "in.png", Path(tmp) / "out.bpg"
            Image.fromarray(rgb, "RGB").save(source)
            subprocess.run([self.encoder, "-q", str(setting["qp"]), "-f", "444", "-o", str(target), str(source)],
                           check=True, capture_output=True)
            return target.read_bytes()

    def decode(self, data: bytes) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="ldcodec-bpg-") as tmp:
            source, target = Path(tmp) / "in.bpg", Path(tmp) / "out.png"
            source.write_bytes(data)
            subprocess.run([self.decoder, "-o", str(target), str(source)], check=True, capture_output=True)
            with Image.open(target) as image:
                return _to_rgb_array(image)


@lru_cache(maxsize=4)
def _ldcodec_model(model: str | None = None):
    """An ldcodec model (None: the default one), loaded once per process and shared by every step count."""
    import ldcodec

    if not hasattr(ldcodec, "load"):
        raise CodecUnavailableError("ldcodec.load() is not available in this installation")
    try:
        return ldcodec.load() if model is None else ldcodec.load(model)
    except LdcodecError as exc:
        raise CodecUnavailableError(f"cannot load the model: {exc}") from exc


def model_curve_name(model: str | None) -> str:
    """``ldcodec`` for the default model, ``ldcodec-<id>`` for another (a weights path gives its stem)."""
    if model is None:
        return "ldcodec"
    return f"ldcodec-{Path(model).stem if str(model).endswith('.safetensors') else model}"


class LdcodecCodec:
    """Adapter for ldcodec itself: sweeps ``quality`` at a fixed number of diffusion steps.

    One instance per ``steps`` value, so each step count is its own RD curve
    (``ldcodec`` for steps 0, ``ldcodec-steps4`` for 4). ``model`` names another
    installed model than the default, for a model-against-model comparison: its
    curve is ``ldcodec-<model>``. The model is loaded lazily, once per process for
    all step counts, and never pickled.
    """

    quality_range = (0.0, 1.0)

    def __init__(self, steps: int = 0, model: str | None = None):
        self.steps = steps
        self.model = model
        base = model_curve_name(model)
        self.name = base if steps == 0 else f"{base}-steps{steps}"
        self._codec = None

    def __getstate__(self):
        return {**self.__dict__, "_codec": None}

    @property
    def codec(self):
        if self._codec is None:
            self._codec = _ldcodec_model(self.model)
            if self.steps and not getattr(self._codec, "has_diffusion_decoder", True):
                raise CodecUnavailableError(f"the model has no diffusion decoder (steps={self.steps})")
        return self._codec

    def settings(self, points: int) -> list[dict]:
        return [{"quality": q, "steps": self.steps} for q in _spread(*self.quality_range, points, integer=False)]

    def label(self, setting: dict) -> str:
        text = f"quality={setting['quality']:g}"
        return f"{text},steps={setting['steps']}" if setting.get("steps") else text

    def encode(self, rgb: np.ndarray, setting: dict) -> bytes:
        return self.codec.encode(rgb, quality=setting["quality"])

    def decode(self, data: bytes) -> np.ndarray:
        image = self.codec.decode(data, steps=self.steps)  # default seed: deterministic
        return _to_rgb_array(image) if isinstance(image, Image.Image) else np.asarray(image, dtype=np.uint8)


CODEC_NAMES = ("ldcodec", "jpeg", "webp", "avif", "hevc", "bpg")


def _check_heif_encoder(encoder_key: str, what: str) -> None:
    try:
        import pillow_heif
    except ImportError as exc:
        raise CodecUnavailableError(f"{what} needs pillow-heif (pip install 'ldcodec[eval]')") from exc
    info = pillow_heif.libheif_info()
    if not info.get(encoder_key):
        raise CodecUnavailableError(f"pillow-heif's libheif has no {what} encoder")


def make_codec(name: str, jpeg_444: bool = False, steps: int = 0):
    """The codec called ``name``; raises :class:`CodecUnavailableError` if it cannot run here."""
    if name == "jpeg":
        return JpegCodec(chroma_444=jpeg_444)
    if name == "jpeg444":
        return JpegCodec(chroma_444=True)
    if name == "webp":
        if not features.check("webp"):
            raise CodecUnavailableError("Pillow was built without WebP")
        return WebpCodec()
    if name == "avif":
        if features.check("avif"):
            return PillowAvifCodec()
        _check_heif_encoder("AVIF", "AVIF")
        return HeifAvifCodec()
    if name == "hevc":
        _check_heif_encoder("HEIF", "HEVC (x265)")
        return HevcCodec()
    if name == "bpg":
        if not (shutil.which("bpgenc") and shutil.which("bpgdec")):
            raise CodecUnavailableError("bpgenc/bpgdec are not on PATH")
        return BpgCodec()
    if name == "ldcodec":
        codec = LdcodecCodec(steps=steps)
        codec.codec  # load now, so an unusable model is reported before the sweep starts
        return codec
    raise CodecUnavailableError(f"unknown codec {name!r} (known: {', '.join(CODEC_NAMES)})")


def make_codecs(names: list[str], jpeg_444: bool = False, steps: tuple[int, ...] = (0,),
                compare_models: tuple[str, ...] = ()) -> tuple[list, list[str]]:
    """The runnable codecs among ``names`` and one message per codec skipped.

    ``jpeg_444`` adds a ``jpeg444`` curve beside ``jpeg``; ``steps`` gives one
    ldcodec curve per diffusion step count; ``compare_models`` one steps-0 curve per
    other installed model (``ldcodec-<model>``).
    """
    codecs, skipped = [], []
    for model in compare_models:
        other = LdcodecCodec(steps=0, model=model)
        try:
            other.codec  # load now: a model that is not installed is reported before the sweep
            codecs.append(other)
        except CodecUnavailableError as exc:
            skipped.append(f"{other.name}: {exc}")
    for name in names:
        variants = [{"steps": k} for k in steps] if name == "ldcodec" else [{}]
        for variant in variants:
            try:
                codecs.append(make_codec(name, **variant))
            except CodecUnavailableError as exc:
                skipped.append(f"{name}{'' if not variant.get('steps') else ' steps=' + str(variant['steps'])}: {exc}")
        if name == "jpeg" and jpeg_444:
            codecs.append(JpegCodec(chroma_444=True))
    return codecs, skipped
