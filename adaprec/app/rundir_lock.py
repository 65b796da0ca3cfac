"""One process per run directory: an exclusive lock, released on exit, stale ones detected.

The lock is ``<run_dir>/.adaprec.lock`` held with ``fcntl.flock``: the kernel drops it when the
holder exits in any way (SIGKILL and a node reboot included), so a lock file whose lock nobody
holds is stale by definition and is taken over with a warning. The file names the holder (pid,
host, start time) for the refusal message; ``filelock`` would lock just as well but cannot say
who holds a lock, which is the first thing a user wants to know.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "RunDirBusy", "RunDirLock"]

LOCK_NAME = ".adaprec.lock"
log = logging.getLogger("adaprec")

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; the run dir is then unguarded
    fcntl = None  # type: ignore[assignment]

_HELD: dict[str, list] = {}  # realpath -> [fd, depth]: re-entrant within one process


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirLock:
    """``with RunDirLock(run_dir):`` -- exclusive use of ``run_dir`` for this process.

    Re-entrant in one process (the CLI and ``train`` both take it). A second process gets
    :class:`RunDirBusy` at once (no waiting: a run dir in use is a mistake, not a queue)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.key = os.path.realpath(self.path)

    def __enter__(self) -> "RunDirLock":
        held = _HELD.get(self.key)
        if held is not None:
            held[1] += 1
            return self
        if fcntl is None:
            _HELD[self.key] = [None, 1]
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise RunDirBusy(f"{self.path.parent} is in use by {_holder(self.path)}; wait for "
                                 "it to finish or choose another run dir (hydra.run.dir=...)") from None
            # the holder we waited on may have unlinked the file after we opened it: only a
            # lock on the inode the path names now counts
            if _same_file(fd, self.path):
                break
            os.close(fd)
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:
            log.warning("%s: took over a stale lock of %s (that process is gone)",
                        self.path.parent, _describe(previous))
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        _HELD[self.key] = [fd, 1]
        return self

    def __exit__(self, *exc_info) -> None:
        held = _HELD[self.key]
        held[1] -= 1
        if held[1]:
            return
        del _HELD[self.key]
        if held[0] is not None:
            try:
                self.path.unlink(missing_ok=True)  # still ours: unlink while holding the lock
            finally:
                os.close(held[0])


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(path: Path) -> str:
    try:
        return _describe(path.read_text().strip())
    except OSError:
        return "another process"


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} (since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
