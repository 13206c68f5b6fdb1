"""A sweep's storage: the folder ``STORAGE/NAME`` every node reads and writes, and the probe that
says whether it takes writes.

:class:`Storage` reaches a local or network path (written with fsync and rename) or a URI
(``s3://``, ``gs://``, ``file://``) through pyarrow's filesystems, where one object write is atomic.
:func:`storage_problem` writes and removes a small file there: a full disk, a read-only mount, no
permission or a quota refuse it as they refuse every other write of the sweep (the driver checks it
before launching; :mod:`vgray.distributed.storage_watch` while the sweep runs). No Ray here.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import List, Optional

from vgray.atomic import write_bytes


class Storage:
    """A folder that every node reaches (created when missing, unless ``create`` is false: then
    only read, so that a check can look before anything is made): a path or a URI."""

    def __init__(self, directory: str | os.PathLike, create: bool = True):
        text = str(directory)
        self.uri = "://" in text
        if self.uri:
            from pyarrow import fs

            self.fs, self.root = fs.FileSystem.from_uri(text)
        else:
            self.root = str(Path(text))
        if create:
            self.make()

    def missing(self) -> List[str]:
        """The folder and those of its parents that are not there yet, deepest first."""
        missing = []
        folder = self.root.rstrip("/") or "/"
        while not self._is_there(folder):
            missing.append(folder)
            parent = posixpath.dirname(folder) if self.uri else os.path.dirname(folder)
            if parent in ("", folder):
                break
            folder = parent
        return missing

    def make(self) -> None:
        """Create the folder and its missing parents."""
        if self.uri:
            self.fs.create_dir(self.root, recursive=True)
        else:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _is_there(self, folder: str) -> bool:
        if not self.uri:
            return os.path.lexists(folder)
        from pyarrow import fs

        return self.fs.get_file_info(folder).type != fs.FileType.NotFound

    def unmake(self, folders: List[str]) -> None:
        """Remove ``folders`` (what :meth:`missing` listed before :meth:`make`) where they are empty."""
        for folder in folders:
            try:
                if not self.uri:
                    os.rmdir(folder)
                else:
                    from pyarrow import fs

                    if not self.fs.get_file_info(fs.FileSelector(folder)):
                        self.fs.delete_dir(folder)
            except OSError:  # something else was put there meanwhile: it stays, and its parents
                return

    def path(self, name: str) -> str:
        """Where ``name`` lies: a local path, or the filesystem's path of a URI."""
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        if not self.uri:
            return os.path.exists(self.path(name))
        from pyarrow import fs

        return self.fs.get_file_info(self.path(name)).type != fs.FileType.NotFound

    def read_bytes(self, name: str) -> bytes:
        if not self.uri:
            return Path(self.path(name)).read_bytes()
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        """``name`` (subfolders made) holds ``data`` whole, or keeps what it held."""
        if not self.uri:
            Path(self.path(name)).parent.mkdir(parents=True, exist_ok=True)
            write_bytes(Path(self.path(name)), data)
            return
        with self.fs.open_output_stream(self.path(name)) as f:
            f.write(data)

    def delete(self, name: str) -> None:
        if self.uri:
            self.fs.delete_file(self.path(name))
        else:
            os.unlink(self.path(name))


def storage_problem(directory: str) -> Optional[str]:
    """None when a small file can be written (and removed) in ``directory``; else the reason.
    Leaves nothing behind: the folders made for the probe are removed again, so that a check that
    fails after it (or a sweep that never starts) does not leave ``STORAGE/NAME`` to be resumed."""
    probe = f".write-test-{os.getpid()}"
    made: List[str] = []
    storage = None
    try:
        storage = Storage(directory, create=False)
        made = storage.missing()
        storage.make()
        storage.write_bytes(probe, b"ok")
        storage.delete(probe)
    except (OSError, ValueError) as exc:  # pyarrow raises OSError subclasses, ValueError for bad URIs
        return getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        if storage is not None and made:
            storage.unmake(made)
    return None
