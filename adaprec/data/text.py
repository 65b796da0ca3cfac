"""Byte-level language modelling text: a user's file, or a corpus that ships with Python."""
from __future__ import annotations

from pathlib import Path

import torch

from adaprec.data.bundle import DataBundle, DataError
from adaprec.data.corpus import help_topic_documents, help_topics, split_by_document, stdlib_documents

__all__ = ["load_text", "default_text", "CORPORA"]

CORPORA = ("help_topics", "stdlib")


def default_text() -> str:
    """Python's own help topics (``pydoc_data.topics``, ~466 kB of English and code), always
    installed with CPython, so the LM default needs no download."""
    return help_topics().decode("utf-8")


def load_text(path: str | None = None, corpus: str = "help_topics", stdlib_dir: str | None = None,
              block_size: int = 64, val_fraction: float = 0.1, max_chars: int | None = None,
              **_) -> DataBundle:
    """Tokens are the UTF-8 bytes of the text (vocabulary 256), held as one uint8 tensor.

    ``path`` (a file) wins over ``corpus``. A file and the ``help_topics`` corpus are one stream:
    its first ``1 - val_fraction`` trains, the rest validates (contiguous, so no window straddles
    the split). The ``stdlib`` corpus (the standard library's ``.py`` files under ``stdlib_dir``,
    default this interpreter's, plus the help topics) is split by whole documents
    (:func:`adaprec.data.corpus.split_by_document`).

    ``max_chars`` keeps at most that many bytes in all (quick runs): the first
    ``(1 - val_fraction) * max_chars`` of the training stream and the rest from the start of the
    validation stream. Extra config keys (``vocab_size``, ``task``) are accepted and ignored.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    train, val = _train_val_bytes(path, corpus, stdlib_dir, val_fraction)
    if max_chars is not None:
        n_train = int(max_chars * (1.0 - val_fraction))
        train, val = train[:n_train], val[:max_chars - n_train]
    total = len(train) + len(val)
    if min(len(train), len(val)) <= block_size:
        raise DataError(f"text of {total} bytes is too short for block_size={block_size} "
                        f"with val_fraction={val_fraction}: each split needs more than "
                        f"block_size bytes; use a longer text or a smaller block_size")
    return DataBundle("lm", _tokens(train), None, _tokens(val), None, vocab_size=256,
                      block_size=block_size)


def _train_val_bytes(path, corpus, stdlib_dir, val_fraction) -> tuple[bytes, bytes]:
    if path is not None:
        data = _read_bytes(path)
    elif corpus == "help_topics":
        data = help_topics()
    elif corpus == "stdlib":
        return split_by_document(stdlib_documents(stdlib_dir) + help_topic_documents(), val_fraction)
    else:
        raise DataError(f"dataset.corpus must be one of {', '.join(CORPORA)}, got {corpus!r} "
                        f"(or set dataset.path to a file)")
    n_train = int(len(data) * (1.0 - val_fraction))
    return data[:n_train], data[n_train:]


def _tokens(data: bytes) -> torch.Tensor:
    # one copy into a uint8 tensor (8x smaller than int64); batches are widened to int64
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _read_bytes(path: str) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"expected a text file at {p} (dataset.path: any UTF-8 or binary file, "
                        f"read as bytes); it does not exist or is not a file")
    return p.read_bytes()
