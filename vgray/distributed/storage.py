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
from pathlib import Path
from typing import Optional

from vgray.atomic import write_bytes


class Storage:
    """A folder that every node reaches (created when missing): a path or a URI."""

    def __init__(self, directory: str | os.PathLike):
        text = str(directory)
        self.uri = "://" in text
        if self.uri:
            from pyarrow import fs
            self.fs, self.root = fs.FileSystem.from_uri(text)
            self.fs.create_dir(self.root, recursive=True)
        else:
            self.root = str(Path(text))
            Path(self.root).mkdir(parents=True, exist_ok=True)

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
    """None when a small file can be written (and removed) in ``directory``; else the reason."""
    probe = f".write-test-{os.getpid()}"
    try:
        storage = Storage(directory)
        storage.write_bytes(probe, b"ok")
        storage.delete(probe)
    except (OSError, ValueError) as exc:  # pyarrow raises OSError subclasses, ValueError for bad URIs
        return getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None
