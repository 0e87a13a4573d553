"""Decoding the streams of every installed model, not only the default one's.

A stream names the model that wrote it (id and weights hash). When the default model
changes (``hp-v1`` -> ``hp-v2``), streams written before must still decode without
the user naming their model: :class:`StreamCodecs` loads, on first need, the codec of
the installed model a stream names, and the default model's for anything else (whose
decode then fails with the message that says which weights the stream needs).
"""

from __future__ import annotations

from typing import Callable

from ldcodec.bitstream import container
from ldcodec.codec.weights import available_models, default_model_id
from ldcodec.errors import LdcodecError


def stream_model_id(blob: bytes) -> str | None:
    """The model id in a stream's header (CRC-checked), or None when the header does not parse."""
    try:
        # Only the id is read here: the size limit is the decoder's to apply.
        header, _, _ = container.parse_header(blob, max_pixels=container.MAX_SIDE ** 2)
    except LdcodecError:
        return None
    return header.model_id


class StreamCodecs:
    """One codec per installed model, loaded the first time a stream names it.

    ``loader(model_id)`` builds a codec (the caller's device, precision and limits);
    ``loaded``: codecs the caller already has, by model id.
    """

    def __init__(self, loader: Callable[[str], object], loaded: dict[str, object] | None = None):
        self._loader = loader
        self._codecs: dict[str, object] = dict(loaded or {})

    def model_for(self, blob: bytes) -> str:
        named = stream_model_id(blob)
        return named if named is not None and named in available_models() else default_model_id()

    def for_stream(self, blob: bytes):
        model = self.model_for(blob)
        if model not in self._codecs:
            self._codecs[model] = self._loader(model)
        return self._codecs[model]
