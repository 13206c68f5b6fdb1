"""Atomic file writes, for every file another process (or the next run) may read: results,
summaries, checkpoints, descriptor shards, indexes, reports.

A file is written under a temporary name beside its target (``.NAME.PID.tmp``), flushed to disk,
then moved onto the target with ``os.replace``, and the rename itself is made durable by syncing
the folder. A reader sees the old file or the new one, never part of one; a process killed or a
disk filled mid-write leaves the previous good file and removes (or, when killed, leaves behind)
only its temporary, which nothing ever reads.

A target that exists and is not a regular file is never replaced (:func:`target`): a character
device or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe) is written through, opened and
written in place, from a temporary file elsewhere; a link to a regular file is followed, so that
the link stays and the file it names is replaced; a dangling or looping link, a folder, a block
device and a socket are refused (:class:`~vgray.errors.BadInput`). A write that fails (a full disk,
``/dev/full``) raises its ``OSError``, which the command line turns into one line and exit 1.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple

from vgray.errors import BadInput, shown

__all__ = ["temp_name", "commit", "atomic_path", "write_bytes", "write_text", "target", "writes_through", "kind_of"]


def kind_of(mode: int) -> str:
    """``a folder``, ``a FIFO``, ...: what an existing path with ``mode`` is, for a message."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a file"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def writes_through(mode: int) -> bool:
    """Whether an output that exists with ``mode`` is written through (opened and written in place)
    rather than replaced: character devices and FIFOs. Block devices and sockets are refused."""
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


# /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N: this process's own descriptors, written as they are.
# (``/proc/PID/fd/N`` is this process's only for its own pid, read at each call: Ray and DataLoader fork.)
_OWN_FD = re.compile(r"/dev/(?:std(?:in|out|err)|fd/(\d+))|/proc/(self|\d+)/fd/(\d+)")


def _own_fd(path: Path) -> Optional[int]:
    match = _OWN_FD.fullmatch(os.path.abspath(path))
    if match is None or match.group(2) not in (None, "self", str(os.getpid())):
        return None
    name = os.path.basename(path)
    fd = {"stdin": 0, "stdout": 1, "stderr": 2}.get(name)
    return fd if fd is not None else int(match.group(1) or match.group(3))


def target(path: str | os.PathLike[str]) -> Tuple[Path, bool]:
    """Where a write of ``path`` lands and whether it is written through: ``(path, False)`` for a
    regular file or none; the file a link names (the link stays); ``(path, True)`` for a
    character device, a FIFO, or a file reached through ``/dev`` or ``/proc`` (``/dev/stdout``).
    BadInput for a dangling or looping link, a folder, a block device or a socket."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        if os.path.islink(p):
            raise BadInput(
                f"{show_path(p)} is a link to {show_path(os.readlink(p))}, which does not exist; vgray writes "
                f"a file or through a device, never a dangling link"
            )
        return p, False
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG):
            raise BadInput(f"{show_path(p)} cannot be written ({exc.strerror}); give a path to a file")
        raise
    if writes_through(mode) or (stat.S_ISREG(mode) and _own_fd(p) is not None):
        return p, True
    if not stat.S_ISREG(mode):
        raise BadInput(f"{show_path(p)} is {kind_of(mode)}; vgray writes files, or through a character device or FIFO")
    return (Path(os.path.realpath(p)) if os.path.islink(p) else p), False


def show_path(p: object) -> str:
    """A path as a message shows it: as typed when printable and short, else quoted and cut."""
    text = str(p)
    return text if text.isprintable() and len(text) <= 200 else shown(text, 200)


def _write_through(src: Path, dest: Path) -> None:
    """Copy the file ``src`` into ``dest`` in place: this process's own descriptor for
    ``/dev/stdout`` and the like, else ``dest`` opened for writing (a FIFO without a reader is
    refused rather than waited on)."""
    own = _own_fd(dest)
    if own is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        _copy_into(src, own)
        return
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise BadInput(f"{show_path(dest)} is a FIFO that no process reads; start its reader first, or give a file")
        raise
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        _copy_into(src, fd)
    except OSError as exc:  # /dev/full: ENOSPC, named by the path it was written to
        raise OSError(exc.errno, exc.strerror, str(dest)) from exc
    finally:
        os.close(fd)


def _copy_into(src: Path, fd: int) -> None:
    with open(src, "rb") as f:
        while chunk := f.read(1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]


def temp_name(path: str | os.PathLike[str]) -> Path:
    """The temporary name beside ``path`` that this process writes before :func:`commit`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def commit(tmp: Path, path: str | os.PathLike[str], sync: bool = True) -> None:
    """Sync ``tmp`` to disk and move it onto ``path``; the rename is synced too. Without ``sync``,
    only the move: a reader still never sees part of the file, and the caller makes many such
    files durable together (a synthetic world's chunk of images) before anything vouches for them."""
    dest, through = target(path)
    _commit(tmp, dest, through, sync)


def _commit(tmp: Path, path: Path, through: bool, sync: bool) -> None:
    """:func:`commit` onto ``path`` as :func:`target` resolved it (``through``: written through)."""
    elsewhere = Path(tmp).parent != path.parent and Path(tmp).resolve().parent != path.resolve().parent
    if through or elsewhere:  # a device, or a link followed to another folder
        try:
            if through:
                _write_through(tmp, path)
            else:
                shutil.copyfile(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
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
    removed if it raises. A target that is not a regular file is written through or refused
    (:func:`target`): its temporary lies in the system's temporary folder."""
    path, through = target(path)
    if through:
        fd, name = tempfile.mkstemp(prefix=".vgray-", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    else:
        tmp = temp_name(path)
    try:
        yield tmp
        _commit(tmp, path, through, sync)
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
