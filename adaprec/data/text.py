"""Byte-level language modelling text: a user's file, or text that ships with Python."""
from __future__ import annotations

from pathlib import Path

import torch

from adaprec.data.bundle import DataBundle, DataError

__all__ = ["load_text", "default_text"]


def default_text() -> str:
    """Python's own help topics (``pydoc_data.topics``, ~466 kB of English and code), always
    installed with CPython, so the LM default needs no download."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def load_text(path: str | None = None, block_size: int = 64, val_fraction: float = 0.1,
              max_chars: int | None = None, **_) -> DataBundle:
    """Tokens are the UTF-8 bytes of the text (vocabulary 256). The first ``1 - val_fraction``
    of the stream trains, the rest validates (contiguous, so no window straddles the split).

    ``max_chars`` keeps only the first that many bytes (quick runs). Extra config keys
    (``vocab_size``, ``task``) are accepted and ignored.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    data = _read_bytes(path) if path is not None else default_text().encode("utf-8")
    if max_chars is not None:
        data = data[:max_chars]
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n_train = int(len(tokens) * (1.0 - val_fraction))
    train, val = tokens[:n_train], tokens[n_train:]
    if min(len(train), len(val)) <= block_size:
        raise DataError(f"text of {len(tokens)} bytes is too short for block_size={block_size} "
                        f"with val_fraction={val_fraction}: each split needs more than "
                        f"block_size bytes; use a longer text or a smaller block_size")
    return DataBundle("lm", train, None, val, None, vocab_size=256, block_size=block_size)


def _read_bytes(path: str) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"expected a text file at {p} (dataset.path: any UTF-8 or binary file, "
                        f"read as bytes); it does not exist or is not a file")
    return p.read_bytes()
