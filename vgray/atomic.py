"""Atomic file writes, for every file another process (or the next run) may read: results,
summaries, checkpoints, descriptor shards, indexes, reports.

A file is written under a temporary name beside its target (``.NAME.PID.tmp``), flushed to disk,
then moved onto the target with ``os.replace``, and the rename itself is made durable by syncing
the folder. A reader sees the old file or the new one, never part of one; a process killed or a
disk filled mid-write leaves the previous good file and removes (or, when killed, leaves behind)
only its temporary, which nothing ever reads.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["temp_name", "commit", "atomic_path", "write_bytes", "write_text"]


def temp_name(path: str | os.PathLike[str]) -> Path:
    """The temporary name beside ``path`` that this process writes before :func:`commit`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def commit(tmp: Path, path: str | os.PathLike[str], sync: bool = True) -> None:
    """Sync ``tmp`` to disk and move it onto ``path``; the rename is synced too. Without ``sync``,
    only the move: a reader still never sees part of the file, and the caller makes many such
    files durable together (a synthetic world's chunk of images) before anything vouches for them."""
    path = Path(path)
    if not sync:
        os.replace(tmp, path)
        return
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some network file systems): rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], sync: bool = True) -> Iterator[Path]:
    """A temporary path for a writer that takes a file name (``torch.save``, ``faiss.write_index``,
    ``pq.write_table``): moved onto ``path`` when the block ends (:func:`commit`, with ``sync``),
    removed if it raises."""
    tmp = temp_name(path)
    try:
        yield tmp
        commit(tmp, path, sync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))
