"""One writer per sweep folder: the lock a ``vgray sweep`` driver holds on ``STORAGE/NAME`` for its
whole run, so that a second run into the same folder (the same ``name`` and ``storage``, with or
without ``--resume``) is refused at once, before it writes anything or starts Ray, with one line
naming the run that holds it.

The lock is the operating system's (``fcntl.flock`` on :data:`LOCK_FILE`, a hidden file inside the
sweep folder), held through an open file of the driver process: when the holder ends, however it
ends (SIGKILL and a lost machine included), the lock is free again, so a stale lock needs no
guessing from pids. The file itself stays (removing it would let two runs lock two different files
of one name); it holds the holder's pid, host, start time and command while held, and nothing once
released. No code that reads a sweep folder lists files in it: the results, the plan, Tune's state
and the trial folders are found by name.

Where the storage is an object store (``s3://``, ``gs://``: no locks there), and where the folder's
file system refuses locks, the lock is a file on this machine, keyed on the folder's URI, under the
cache (``CACHE/sweep-locks/``): two runs on one machine still meet it; runs of one sweep started on
two machines do not, and must not be. A ``file://`` URI is a local folder and is locked there.
No Ray here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from vgray.errors import BadInput

LOCK_FILE = ".vgray-sweep.lock"
_RETRY_S = 1.0  # a probe holds the lock shared for an instant: the taker tries again this long


def lock_path(directory: str) -> Path:
    """The lock file of the sweep folder ``directory`` (a path or a URI), local to this machine."""
    if "://" not in directory:
        return Path(directory) / LOCK_FILE
    if directory.startswith("file://"):
        from pyarrow import fs

        filesystem, root = fs.FileSystem.from_uri(directory)
        if isinstance(filesystem, fs.LocalFileSystem):
            return Path(root) / LOCK_FILE
    return _cache_lock(directory)


def _cache_lock(directory: str) -> Path:
    from vgray.paths import cache_dir

    key = hashlib.sha256(directory.rstrip("/").encode()).hexdigest()[:24]
    return cache_dir() / "sweep-locks" / f"{key}.lock"


def check_free(directory: str, name: str) -> None:
    """Refuse (:class:`BadInput`, one line naming the holder) a sweep folder whose lock a running
    driver holds. Only reads: nothing is made where no lock file is."""
    for path in {lock_path(directory), _cache_lock(directory)}:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # none there (or unreadable: taking the lock will say so)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInput(held_line(directory, name, _holder(fd))) from None
        except OSError:  # a file system without locks: the taker falls back to the cache's
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def sweep_lock(directory: str, name: str) -> Iterator[Path]:
    """Hold the lock of the sweep folder ``directory`` (made when missing) for the ``with`` block;
    :class:`BadInput` naming the holder when another run has it. A :class:`BadInput` from inside
    the block (a refusal before the sweep wrote anything) takes back what taking the lock made:
    the lock file and the folders made for it, where they are empty."""
    path = lock_path(directory)
    made = _missing(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, path, existed = _take(path, directory, name)
    except BadInput:
        _unmake([], made)
        raise
    try:
        yield path
    except BadInput:
        _unmake([] if existed else [path], made)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # released: no holder to name
        os.close(fd)


def _take(path: Path, directory: str, name: str) -> Tuple[int, Path, bool]:
    """An open file of ``path`` holding its lock, the path, and whether the file was there before;
    on a file system that refuses locks, the cache's lock of ``directory`` instead."""
    try:
        return _locked(path, directory, name)
    except OSError as exc:
        fallback = _cache_lock(directory)
        if isinstance(exc, BlockingIOError) or fallback == path:
            raise BadInput(f"storage: cannot take the lock of sweep '{name}' ({path}: {exc.strerror or exc})") from None
    fallback.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _locked(fallback, directory, name)
    except OSError as exc:
        raise BadInput(f"storage: cannot take the lock of sweep '{name}' ({fallback}: {exc.strerror or exc})") from None


def _locked(path: Path, directory: str, name: str) -> Tuple[int, Path, bool]:
    """Open ``path`` and lock it (trying for :data:`_RETRY_S` while a probe holds it shared), check
    that the path still names the file locked, and write the holder into it."""
    deadline = time.monotonic() + _RETRY_S
    while True:
        existed = os.path.lexists(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise BadInput(held_line(directory, name, holder)) from None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if not same:  # removed or replaced meanwhile: lock the file the path names now
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me(directory)).encode(), 0)
        return fd, path, existed


def _me(directory: str) -> Dict[str, object]:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command[:200],
        "folder": directory,
    }


def _holder(fd: int) -> Dict[str, object]:
    """The holder a lock file names; ``{}`` when it names none (yet)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def held_line(directory: str, name: str, holder: Dict[str, object]) -> str:
    """The one line of a refusal: the sweep, its folder, who holds it and what to do."""
    who = "another vgray sweep"
    if holder.get("pid"):
        who = f"pid {holder['pid']} on {holder.get('host') or 'an unknown host'}"
        if holder.get("started"):
            who += f" since {holder['started']}"
        if holder.get("command"):
            who += f" ({holder['command']})"
    stop = f"kill -INT {holder['pid']}" if holder.get("pid") else "Ctrl-C in its terminal"
    return (
        f"sweep '{name}' in {directory} is being run by {who}; one run writes a sweep folder at a time: "
        f"wait for it to end, or stop it ({stop}) and carry on with --resume, "
        f"or give this run another name or --storage"
    )


def _missing(folder: Path) -> List[Path]:
    """``folder`` and those of its parents that are not there yet, deepest first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    return missing


def _unmake(files: List[Path], folders: List[Path]) -> None:
    for path in files:
        with contextlib.suppress(OSError):
            path.unlink()
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # something else is in it: it stays, and its parents
            return
