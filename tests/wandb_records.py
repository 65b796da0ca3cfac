"""Read an offline W&B run's history back from its ``.wandb`` file (a LevelDB-format log of
protobuf ``Record``s; wandb ships no reader since its Go core), for the tracker tests."""
import json
import struct
import time
from pathlib import Path

_BLOCK, _HEADER = 32768, 7  # LevelDB log blocks; the file starts with ':W&B' + version (7 bytes)


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, pending = Path(path).read_bytes(), _HEADER, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _complete(path: Path, wait_s: float = 60.0) -> list:
    """The run's records once its ``exit`` record is on disk: wandb's service process may still
    be writing when ``run.finish()`` returns."""
    deadline = time.monotonic() + wait_s
    while True:
        found = list(records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def history(run_dir: Path) -> list[dict]:
    """Every ``run.log`` commit of the (only) offline run under ``run_dir/wandb``, decoded."""
    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    rows = []
    for r in _complete(path):
        if r.WhichOneof("record_type") != "history":
            continue
        row: dict = {}
        for item in r.history.item:
            key = [item.key] if item.key else list(item.nested_key)
            if len(key) == 1:
                row[key[0]] = json.loads(item.value_json)
            else:  # media (histograms, tables): one item per field, keyed [name, field]
                *name, field = key
                row.setdefault("/".join(name), {})[field] = json.loads(item.value_json)
        rows.append(row)
    return rows


def config(run_dir: Path) -> dict:
    """The run's config as its ``config`` records hold it."""
    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    out: dict = {}
    for r in _complete(path):
        if r.WhichOneof("record_type") == "config":
            out.update({i.key: json.loads(i.value_json) for i in r.config.update})
    return out
