"""Entropy parameters are reproduced bit for bit across thread counts and precisions.

A stream encoded with 2 threads and a bf16 analysis transform must entropy-decode
to exactly the same latents (and the same Gaussian parameters) in another process
running 1 thread in fp32, and with 4 threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import hashlib, json, sys
import numpy as np, torch
import ldcodec
from ldcodec.codec.entropy_parameters import gaussian_parameters
mode, weights, path, threads, precision = sys.argv[1:6]
torch.set_num_threads(int(threads))
codec = ldcodec.load(weights, precision=precision)
if mode == "encode":
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:70, 0:90]
    img = np.clip(np.stack([128 + 100*np.sin(xx/(5+c))*np.cos(yy/7) for c in range(3)], -1)
                  + rng.normal(0, 8, (70, 90, 3)), 0, 255).astype(np.uint8)
    open(path, "wb").write(codec.encode(img, quality=0.6))
stream, y_hat = codec.decode_latents(open(path, "rb").read())
pixels = np.asarray(codec.decode(open(path, "rb").read()))
print(json.dumps({"threads": torch.get_num_threads(), "precision": precision,
                  "latents": hashlib.sha256(y_hat.tobytes()).hexdigest(),
                  "pixels": hashlib.sha256(pixels.tobytes()).hexdigest()}))
"""


def run(mode, weights, path, threads, precision):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(weights), str(path), str(threads), precision],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_stream_decodes_identically_across_threads_and_precisions(tiny_weights, tmp_path):
    path = tmp_path / "det.ldc"
    encoder = run("encode", tiny_weights, path, 2, "bf16")
    configs = [encoder] + [run("decode", tiny_weights, path, t, p) for t, p in [(1, "fp32"), (4, "fp32"), (1, "bf16")]]
    for c in configs:
        print(f"threads={c['threads']} precision={c['precision']} latents={c['latents'][:16]}")
    assert len({c["latents"] for c in configs}) == 1, configs
    fp32 = [c for c in configs if c["precision"] == "fp32"]
    assert fp32[0]["pixels"] == fp32[1]["pixels"]


def test_gaussian_parameters_ignore_the_callers_thread_setting(tiny_codec):
    import torch

    from ldcodec.codec.entropy_parameters import gaussian_parameters

    z = np.random.default_rng(0).integers(-3, 4, size=(16, 3, 5)).astype(np.int32)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        p = gaussian_parameters(tiny_codec._hyper_synthesis, z)
        results.append(hashlib.sha256(p.means.tobytes() + p.scale_indexes.tobytes()).hexdigest())
    assert len(set(results)) == 1
