"""Write ldcodec/bitstream/symbol-tables-v1.safetensors (the "tables-v1" symbol model) and print its sha256.

    python tools/make_symbol_tables.py

The file is a release artifact: once models code with it, it never changes (its hash is pinned in
ldcodec/bitstream/symbol_models.py). A new table set gets a new name.
"""

from __future__ import annotations

import hashlib

from safetensors.numpy import save

from ldcodec.bitstream.symbol_models import TABLES_PATH, gaussian_tables
from ldcodec.codec.entropy_parameters import SCALE_TABLE, Y_SYMBOL_MAX, Y_SYMBOL_MIN


def main() -> None:
    tables = gaussian_tables(SCALE_TABLE)
    blob = save({"probabilities": tables}, metadata={
        "what": "P(symbol | scale level) of the latents, rows = ldcodec SCALE_TABLE levels",
        "symbols": f"{Y_SYMBOL_MIN}..{Y_SYMBOL_MAX}",
        "scales": ",".join(f"{s:.17g}" for s in SCALE_TABLE),
    })
    TABLES_PATH.write_bytes(blob)
    print(TABLES_PATH, tables.shape, hashlib.sha256(blob).hexdigest())


if __name__ == "__main__":
    main()
