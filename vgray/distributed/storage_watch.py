"""A sweep stops when its storage refuses writes, and resumes once that is fixed.

Full disk, read-only mount, no permission, over quota, over the file-size limit: every write of a
sweep (the results actor's rows, Tune's checkpoints and experiment state) fails the same way, so
one check serves them all: a probe file written in the sweep's folder. :class:`StorageWatch`, a
Tune callback in the driver, makes it when a trial fails or retries and every few seconds; when
it fails it ends the Tune run as Ctrl+C does (SIGUSR1, Tune's graceful stop): no new trial starts,
the experiment state is kept and unfinished trials stay resumable with ``vgray sweep --resume``.

Tune copies its own state files (the trials, the searcher) into the sweep's folder without a
temporary file, so a full disk can cut them short. While the folder is writable the watch keeps a
copy of the last whole ones in ``.vgray-tune-state/``; ``--resume`` puts a copy back over a file
that is missing or cut short (:func:`repair_tune_state`) before Tune reads them.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Dict, List, Optional

from ray.tune import Callback

from vgray.distributed.storage import storage_problem

# "the storage refuses writes", whatever wrote
STORAGE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.EFBIG}

STORAGE_TROUBLE: Dict[str, str] = {}  # sweep folder -> why it stopped (in this driver process)

TUNE_STATE = ("experiment_state-*.json", "basic-variant-state-*.json", "searcher-state-*.pkl")
BACKUP = ".vgray-tune-state"


def _whole(path: Path) -> bool:
    """Whether one of Tune's state files reads back whole: the experiment state is JSON, the
    searcher states are cloudpickle whatever their suffix."""
    import json

    from ray import cloudpickle

    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not data:
        return False
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        cloudpickle.loads(data)
        return True
    except Exception:
        return False


def backup_tune_state(directory: str, seen: Optional[Dict[str, float]] = None) -> None:
    """Copy Tune's state files that read back whole into ``directory/.vgray-tune-state/`` (local
    folders; an object store writes whole objects). ``seen``: name -> mtime already copied."""
    from vgray.atomic import write_bytes

    if "://" in directory:
        return
    folder = Path(directory)
    for pattern in TUNE_STATE:
        for path in folder.glob(pattern):
            mtime = path.stat().st_mtime
            if seen is not None and seen.get(path.name) == mtime:
                continue
            if _whole(path):
                (folder / BACKUP).mkdir(exist_ok=True)
                write_bytes(folder / BACKUP / path.name, path.read_bytes())
                if seen is not None:
                    seen[path.name] = mtime


def repair_tune_state(directory: str) -> List[str]:
    """Put the last whole copy back over each of Tune's state files that is missing or cut short;
    returns the names put back."""
    from vgray.atomic import write_bytes

    if "://" in directory or not (Path(directory) / BACKUP).is_dir():
        return []
    folder, repaired = Path(directory), []
    for copy in sorted((folder / BACKUP).iterdir()):
        target = folder / copy.name
        if not (target.is_file() and _whole(target)) and _whole(copy):
            write_bytes(target, copy.read_bytes())
            repaired.append(copy.name)
    return repaired


def refused_write(error: Optional[BaseException]) -> bool:
    """Whether ``error`` (or an exception it was raised from, Ray's task errors included) is a
    write the storage refused."""
    for _ in range(10):
        if error is None:
            return False
        if getattr(error, "errno", None) in STORAGE_ERRNOS:
            return True
        error = error.__cause__ or error.__context__ or getattr(error, "cause", None)
    return False


class StorageWatch(Callback):
    """Probes ``directory`` on every trial error or retry, and every ``every_s`` seconds."""

    def __init__(self, directory: str, every_s: float = 5.0):
        self.directory, self.every_s, self.last = directory, every_s, 0.0
        self.seen: Dict[str, float] = {}  # name -> mtime of the state files already backed up

    def check(self, trial=None) -> Optional[str]:
        self.last = time.monotonic()
        if self.directory in STORAGE_TROUBLE:
            return STORAGE_TROUBLE[self.directory]
        reason = storage_problem(self.directory)
        if reason is None and trial is not None and refused_write(trial.get_pickled_error()):
            reason = "a trial's write was refused"
        if reason is None:
            try:
                backup_tune_state(self.directory, self.seen)
            except OSError:  # the disk filled up between the probe and the copy: next time
                pass
            return None
        STORAGE_TROUBLE[self.directory] = reason
        if callable(signal.getsignal(signal.SIGUSR1)):  # Tune's handler (it runs in the main thread)
            os.kill(os.getpid(), signal.SIGUSR1)
        return reason

    def on_trial_error(self, iteration, trials, trial, **info):
        self.check(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.check(trial)

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last >= self.every_s:
            self.check()
