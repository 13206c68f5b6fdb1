"""What the command line (:mod:`vgray.cli`) and the benchmarks (:mod:`vgray.bench`) share: an
argument parser whose usage errors are one line with exit status 2, and the printout of a command's
figures with its ``--json FILE`` copy.

It sits in the ground, below both, so that ``bench`` need not reach up into ``cli`` for them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, List, Literal, Mapping, NoReturn, Optional, TextIO

from vgray import values
from vgray.atomic import write_text
from vgray.errors import BadInput

if TYPE_CHECKING:
    import threading

    from tqdm import tqdm


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line with exit status 2.

    It raises :class:`~vgray.errors.BadInput`, which ``vgray.cli.main`` prints as one line on
    stderr before it exits 2 (argparse's own error() prints the usage, then exits). Every option
    or argument that takes text and has no ``type=`` of its own gets :data:`vgray.values.text`
    (an empty value is refused, never read as the default); a value its ``type=`` refuses
    (:mod:`vgray.values`: a count below 1, an integer past 64 bits, NaN) is reported as
    ``--option=VALUE must ...``, naming the option.
    """

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.type is None and action.nargs not in (0, argparse.REMAINDER, argparse.PARSER):
            action.type = values.text
        return action

    def error(self, message: str) -> NoReturn:
        refused = re.fullmatch(rf"argument (\S+): {re.escape(values.OPTION_VALUE)}(.*)", message, re.S)
        if refused:  # a value the option's type= refused: "--k=0 must be at least 1"
            option = refused.group(1).split("/")[-1]
            raise BadInput(f"{option}{values.OPTION_VALUE}{refused.group(2)}")
        raise BadInput(f"{self.prog}: {message} (see {self.prog} --help)")


def format_value(value: object, decimals: int = 2) -> str:
    """A figure as printed: floats with ``decimals`` decimals, or 3 significant digits when that
    would print a small non-zero value as 0; anything else as ``str``."""
    if isinstance(value, float):
        if abs(value) >= 10.0**-decimals or value == 0:
            return f"{value:.{decimals}f}"
        return f"{value:.3g}"
    return str(value)


def write_json(path: Optional[str], figures: Mapping[str, object]) -> None:
    """Write ``figures`` to ``path`` as one indented JSON object (atomically, parent folders
    created); nothing when ``path`` is empty."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, json.dumps(figures, indent=2) + "\n")


def print_figures(
    figures: Mapping[str, object], title: Optional[str] = None, json_path: Optional[str] = None, decimals: int = 2
) -> None:
    """Print one figure a line, names aligned, in the order of ``figures``; under ``title``
    (indented by two) when one is given. Then :func:`write_json` to ``json_path``."""
    indent = ""
    if title is not None:
        print(title)
        indent = "  "
    width = max(map(len, figures))
    for k, v in figures.items():
        print(f"{indent}{k:<{width}}  {format_value(v, decimals)}")
    write_json(json_path, figures)


class LibraryWarnings:
    """The Python warnings of one command (PIL's decompression-bomb warning, torch's and Ray's
    deprecations, ...), kept off the console: a bad-input refusal stays one line, and a command's
    printout stays its figures. On :meth:`close` they are appended to ``CACHE/warnings.log``
    (:func:`vgray.paths.cache_dir`); :meth:`summary` (after a normal end) says in one stderr line
    how many there were and where. Processes vgray forks (loader workers) inherit the handler and
    append to the same log."""

    def __init__(self) -> None:
        self.caught: List[str] = []
        self._saved: Optional[Callable[..., None]] = None
        self._owner: Optional[int] = None

    def __enter__(self) -> LibraryWarnings:
        import os
        import warnings

        self._owner = os.getpid()
        self._saved = warnings.showwarning
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False

    def _show(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Optional[TextIO] = None,
        line: Optional[str] = None,
    ) -> None:
        import os

        self.caught.append(f"{filename}:{lineno}: {category.__name__}: {message}")
        if os.getpid() != self._owner:  # a forked worker: its list dies with it, so log now
            self._append(self.caught[-1:])
            self.caught.clear()

    @property
    def log(self) -> Path:
        from vgray.paths import cache_dir

        return cache_dir() / "warnings.log"

    def _append(self, lines: Iterable[str]) -> None:
        import sys
        import time

        try:
            with open(self.log, "a", encoding="utf-8") as f:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                command = " ".join(sys.argv[:3])
                for text in lines:
                    f.write(f"{stamp} [{command}] {' '.join(str(text).split())}\n")
        except OSError:
            pass  # a log that cannot be written must not turn a run into a failure

    def close(self) -> None:
        """Restore the previous handler and log what was caught."""
        import warnings

        if self._saved is not None:
            warnings.showwarning = self._saved
            self._saved = None
        if self.caught:
            self._append(self.caught)

    def summary(self) -> None:
        """One stderr line when warnings were caught (after a command that ended normally)."""
        import sys

        if self.caught:
            print(
                f"vgray: {len(self.caught)} warning{'s' if len(self.caught) > 1 else ''} from libraries "
                f"written to {self.log}",
                file=sys.stderr,
            )


def progress_bar(
    total: Optional[int] = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    bar_format: Optional[str] = None,
) -> tqdm[NoReturn]:
    """The tqdm bar of a long step, the same look for every step (extraction, synthetic worlds,
    NetVLAD's initialisation, PCA, faiss indexes): on stderr, erased when done, as wide as the
    terminal. One rule decides whether it shows: ``enabled`` (a command's progress flag,
    :attr:`vgray.runtime.Runtime.progress`; off inside sweep trials, which report through Tune)
    and stderr is a terminal (tqdm's ``disable=None``), so logs and captured output stay free of
    bar redraws. Use it as a context manager and call ``update(n)``; ``bar_format`` as tqdm's."""
    import sys

    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled or None,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        bar_format=bar_format,
    )


class progress_step:
    """A long step with no progress of its own to report (faiss's k-means, a PCA or an index
    training: one library call), shown under :func:`progress_bar`'s rule as its name and the time
    it has run so far, refreshed twice a second, until it ends. It counts nothing: it says what is
    running and for how long::

        with progress_step("NetVLAD k-means: 50,000 features -> 64 clusters", rt.progress):
            kmeans.train(x)
    """

    def __init__(self, desc: str, enabled: bool = True) -> None:
        self.bar = progress_bar(desc=desc, enabled=enabled, bar_format="{desc}: running {elapsed}")
        self._stop: Optional[threading.Event] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> progress_step:
        if not self.bar.disable:
            import threading

            self._stop = threading.Event()
            # faiss releases the GIL during training, so this thread keeps the time moving.
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def _tick(self) -> None:
        assert self._stop is not None  # set before the thread that runs this starts
        while not self._stop.wait(0.5):
            self.bar.refresh()

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._thread is not None:
            assert self._stop is not None  # set together with the thread
            self._stop.set()
            self._thread.join()
        self.bar.close()
        return False
