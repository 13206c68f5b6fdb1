"""Where vgray keeps what it makes for itself (dataset indexes, synthetic datasets), and the one
door every path a user hands over goes through (:func:`check_path`), wherever it comes from: a
command-line option, a key of a YAML file, an environment variable, a file read back."""

import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

from vgray.atomic import kind_of, show_path, writes_through
from vgray.errors import BadInput, shown
from vgray.values import refuse_empty

PathLike = Union[str, "os.PathLike[str]"]

# What each kind of path may be once it exists; outputs may also be written through a character
# device or a FIFO (``/dev/stdout``, ``/dev/null``, a named pipe): see :mod:`vgray.atomic`.
KINDS = ("out_dir", "out_file", "in_dir", "in_file")
_NAME_MAX, _PATH_MAX = 255, 4096


def _limit(probe: str, name: str, default: int) -> int:
    try:
        return int(os.pathconf(probe, name)) or default
    except (OSError, ValueError):
        return default


def _nearest(path: Path) -> Path:
    """The nearest existing path at or above ``path`` (lexists: a link counts)."""
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def _spelling(text: str, where: str) -> None:
    """The path's characters and lengths: no NUL byte, UTF-8 throughout, each name and the whole
    within what the file system holds."""
    if "\x00" in text:
        raise BadInput(f"{where} {shown(text, 120)} holds a NUL byte; give a path without one")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{where} {shown(text, 120)} holds bytes that are not UTF-8; give a path in UTF-8")
    probe = str(_nearest(Path(os.path.abspath(text)))) if len(raw) < _PATH_MAX else "/"
    name_max, path_max = _limit(probe, "PC_NAME_MAX", _NAME_MAX), _limit(probe, "PC_PATH_MAX", _PATH_MAX)
    if len(os.fsencode(os.path.abspath(text))) >= path_max:
        raise BadInput(
            f"{where} {shown(text, 120)} is {len(raw):,} bytes long; the file system takes paths under {path_max}"
        )
    for part in Path(text).parts:
        if len(part.encode("utf-8")) > name_max:
            raise BadInput(
                f"{where} {shown(text, 120)}: the name {shown(part, 60)} is {len(part.encode('utf-8'))} bytes "
                f"long; the file system takes names of at most {name_max}"
            )


def check_path(value: object, where: str, kind: str) -> Path:
    """The one door of user-given paths: ``value`` (from ``where``: the option, config key or
    environment variable that named it) as a ``kind`` of path, one of :data:`KINDS`, with ``~``
    expanded; BadInput in one line naming ``where`` and what is allowed when it is empty, holds a
    NUL byte or bytes that are not UTF-8, has a name or a length past the file system's limits, is
    a dangling or looping link, is a file where a folder belongs (or the other way round), is a
    block device or a socket, lies under a file, or (an output) cannot be written there: on a
    read-only file system, under a folder this process cannot write. An input that does not exist
    passes (its reader says what it expected); an output that does not exist passes when the
    nearest existing folder above it can be written. Nothing is left behind."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    if not isinstance(value, (str, os.PathLike)):
        raise BadInput(f"{where}={shown(value, 60)} is not a path; give a path (a string)")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise BadInput(f"{where}={shown(text, 60)} is not a path; give a path (a string)")
    if not text.strip():
        raise BadInput(f"{where} is empty; give a path")
    _spelling(text, where)
    path = Path(os.path.expanduser(text))
    _spelling(str(path), where)
    shown_path = show_path(text)
    if re.fullmatch(r"[a-z_]+\.[a-z_]+|[A-Z_]+_(?:CACHE|HOME)", where):  # a config key, a variable: KEY=VALUE
        where, shown_path = f"{where}={shown_path}", ""
    try:
        mode: Optional[int] = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
        if os.path.islink(path):
            raise BadInput(
                f"{where} {shown_path} is a link to {show_path(os.readlink(path))}, which does not exist; "
                f"give a path that exists or none at all"
            )
    except OSError as exc:
        raise BadInput(f"{where} {shown_path}: {_oserror(exc, path)}")
    if mode is None:
        if kind.startswith("out"):
            _writable(_existing_ancestor(path.parent, where, text), where, text)
        return path
    wanted_dir = kind.endswith("dir")
    if stat.S_ISDIR(mode) != wanted_dir and not (kind == "out_file" and writes_through(mode)):
        want = "a folder (created when absent)" if kind == "out_dir" else "a folder" if wanted_dir else "a file"
        found = kind_of(mode)
        if found == "a file":
            found = "a file, not a folder"
        elif found == "a folder":
            found = "a folder, not a file"
        raise BadInput(f"{where} {shown_path} is {found}; give {want}")
    if kind == "out_file" and not (stat.S_ISREG(mode) or writes_through(mode)):
        raise BadInput(
            f"{where} {shown_path} is {kind_of(mode)}; give a file (a character device or a FIFO is written through)"
        )
    if kind == "in_file" and not stat.S_ISREG(mode):
        raise BadInput(f"{where} {shown_path} is {kind_of(mode)}, not a regular file; give a file")
    if kind.startswith("out"):
        if writes_through(mode):
            if not os.access(path, os.W_OK):
                raise BadInput(f"{where} {shown_path} cannot be written; give a file you can write")
        else:
            _writable(path if wanted_dir else Path(os.path.realpath(path)).parent, where, text)
    return path


def _oserror(exc: OSError, path: Path) -> str:
    """What a failed stat of ``path`` means, for the one line."""
    if exc.errno == errno.ELOOP:
        return "its links make a loop; give a path that leads to a file or a folder"
    if exc.errno == errno.ENOTDIR:
        return f"{show_path(str(_file_above(path)))} is a file, not a folder; give a path under a folder"
    if exc.errno == errno.ENAMETOOLONG:
        return "too long for the file system; give a shorter path"
    return f"cannot be used ({exc.strerror or type(exc).__name__}); give a path you can reach"


def _file_above(path: Path) -> Path:
    """The first existing path above ``path`` that is not a folder (the one a path lies under)."""
    for parent in reversed(path.parents):
        if os.path.lexists(parent) and not os.path.isdir(parent):
            return parent
    return path


def _writable(folder: Path, where: str, given: str) -> None:
    """BadInput unless a file can be made in ``folder`` (tried, then removed): a read-only file
    system, a folder of ``/proc`` or ``/sys``, or one whose permissions forbid it, is refused even
    where ``os.access`` says yes (as for root)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".vgray-probe-", dir=folder)
    except OSError as exc:
        raise BadInput(
            f"{where} {show_path(given)}: the folder {show_path(str(folder))} cannot be written "
            f"({exc.strerror or type(exc).__name__}); give a folder you can write"
        )
    os.close(fd)
    os.unlink(name)


def cache_dir() -> Path:
    """``$VGRAY_CACHE``, else ``$XDG_CACHE_HOME/vgray``, else ``~/.cache/vgray`` (created)."""
    if os.environ.get("VGRAY_CACHE"):
        path = check_path(os.environ["VGRAY_CACHE"], "VGRAY_CACHE", "out_dir")
    elif os.environ.get("XDG_CACHE_HOME"):
        path = check_path(os.path.join(os.environ["XDG_CACHE_HOME"], "vgray"), "XDG_CACHE_HOME", "out_dir")
    else:
        path = check_path(os.path.join(os.path.expanduser("~"), ".cache", "vgray"), "~/.cache/vgray", "out_dir")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _existing_ancestor(path: Path, what: str, given: object) -> Path:
    """The nearest existing folder at or above ``path``; BadInput when a file (or a dangling link)
    stands in the way or the folder cannot be written."""
    probe = _nearest(path)
    shown_given = show_path(str(given))
    if os.path.islink(probe) and not os.path.exists(probe):
        raise BadInput(
            f"{what} {shown_given}: {show_path(str(probe))} is a link to {show_path(os.readlink(probe))}, which does not "
            f"exist; give a path under a folder"
        )
    if not probe.is_dir():
        raise BadInput(
            f"{what} {shown_given}: {show_path(str(probe))} is a file, not a folder; give a path under a folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(
            f"{what} {shown_given}: the folder {show_path(str(probe))} cannot be written; give a folder you can write"
        )
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


# The config keys that hold paths: the first kind is only spelled (they also take words and
# FOLDER/NAME or IMAGES::LISTS forms their readers decide on), the second must be a file when set.
SPELLED_KEYS = ("data.root", "data.val_root", "model.pretrained")
FILE_KEYS = ("model.resume_from",)


def check_spelled(value: str, where: str) -> str:
    """A path that also takes other forms (a data root: ``FOLDER/NAME``, ``IMAGES::LISTS``,
    ``synthetic:tiny``) through the door's spelling part: no NUL byte, UTF-8, within the file
    system's lengths; its reader decides the rest. Returns ``value``."""
    _spelling(value, where)
    return value


def check_config_paths(cfg: object) -> None:
    """The path keys of a config (:data:`SPELLED_KEYS`, :data:`FILE_KEYS`) through the one door, at
    load time: no NUL byte, UTF-8, within the file system's lengths; a file where a file is named."""
    for key in SPELLED_KEYS + FILE_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section, None), name, None)
        if not isinstance(value, str) or not value:
            continue
        if key in FILE_KEYS:
            check_path(value, key, "in_file")
        else:
            check_spelled(value, key)


def path_type(where: str, kind: str) -> Callable[[str], str]:
    """An argparse ``type=`` for the option ``where`` that takes a ``kind`` of path: its text through
    :func:`check_path` as the options are read, before the command runs; returns the text."""

    def check(text: str) -> str:
        refuse_empty(text, where)  # the same line as every other empty option's
        check_path(text, where, kind)
        return text

    return check


def check_output_dir(path: PathLike, what: str) -> Path:
    """``path`` as a folder vgray may create or write into (``what``: the option that named it, such
    as ``--out``): :func:`check_path` with ``out_dir``."""
    return check_path(path, what, "out_dir")


def check_output_file(path: PathLike, what: str) -> Path:
    """``path`` as a file vgray may write (``what``: the option, such as ``--json``):
    :func:`check_path` with ``out_file``."""
    return check_path(path, what, "out_file")


def check_input(path: PathLike, what: str, kind: str = "in_file") -> Path:
    """``path`` as a file (or, with ``in_dir``, a folder) vgray reads: :func:`check_path`."""
    return check_path(path, what, kind)
