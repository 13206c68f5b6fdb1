"""Where vgray keeps what it makes for itself (dataset indexes, synthetic datasets)."""

import os
import shutil
from pathlib import Path

from vgray.errors import BadInput


def cache_dir() -> Path:
    """``$VGRAY_CACHE``, else ``$XDG_CACHE_HOME/vgray``, else ``~/.cache/vgray`` (created)."""
    if os.environ.get("VGRAY_CACHE"):
        path = Path(os.environ["VGRAY_CACHE"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "vgray"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _existing_ancestor(path: Path, what: str, given: object) -> Path:
    """The nearest existing folder at or above ``path``; BadInput when a file stands in the way or
    the folder cannot be written."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(f"{what} {given}: {probe} is a file, not a folder; give a path under a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {given}: the folder {probe} cannot be written; give a folder you can write")
    return probe


def check_room(path: str | os.PathLike[str], need_bytes: float, what: str, for_what: str) -> None:
    """BadInput, before anything is written, when the file system of ``path`` (the nearest
    existing folder at or above it) has less free space than ``need_bytes``, an estimate of what
    ``for_what`` will write there; the one line names both."""
    free = shutil.disk_usage(_existing_ancestor(Path(os.path.expanduser(str(path))), what, path)).free
    if need_bytes > free:
        raise BadInput(
            f"{what} {path}: {for_what} need about {need_bytes / 2**30:.1f} GiB, and {free / 2**30:.1f} GiB is "
            f"free there; free some space or choose a folder on a larger disk"
        )


def check_output_dir(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a folder vgray may create or write into (``what``: the option that named it, such
    as ``--out``); BadInput before anything runs when it is a file, lies under a file, or cannot be
    written."""
    p = Path(os.path.expanduser(str(path)))
    if p.exists() and not p.is_dir():
        raise BadInput(f"{what} {path} is a file, not a folder; give a folder (created when absent)")
    _existing_ancestor(p, what, path)
    return p


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a file vgray may write (``what``: the option, such as ``--json``); BadInput before
    anything runs when it is a folder, lies under a file, or its folder cannot be written."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        raise BadInput(f"{what} {path} is a folder; give a file path")
    if p.exists() and not os.access(p, os.W_OK):
        raise BadInput(f"{what} {path} cannot be written; give a file you can write")
    _existing_ancestor(p.parent, what, path)
    return p
