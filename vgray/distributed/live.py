"""What a sweep's user sees on the console while it runs: one compact live table, and Ray's own
log lines kept in a file.

:class:`LiveTable` takes the place of Tune's progress output (:func:`tune_output_off`): one row
each time a trial starts, reports an epoch, ends, fails or is retried, with the sweep's varied keys
as columns (short names), so that each row names its grid point. Tune's per-trial config boxes and status tables do not
appear; ``--verbose`` prints each trial's config (the vgray config it runs, not Tune's dict) and
leaves Ray's log lines on the console.

:func:`ray_log_file` routes the ``ray`` loggers (``ray.tune``, ``ray.data``, ``ray.train``, ...) of
the driver into ``STORAGE/NAME/logs/ray.log`` (a local folder when the storage is a URI); their
ERROR lines still show on the console as one line each, so that a failure is not hidden.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ray.tune import Callback

from vgray.distributed.spec import decode_trial

LOG_NAME = "ray.log"

# The console settings of this driver process (set by :func:`console`): a Tune callback is pickled
# into the sweep's tuner.pkl and comes back from it on --resume, so it reads them here, not from
# its own attributes.
_SETTINGS: Dict[str, Any] = {"verbose": False}


@contextlib.contextmanager
def console(log_path: Optional[Path], verbose: bool) -> Iterator[None]:
    """The console of one sweep run: ``verbose`` for the live table's config printouts, and Ray's
    log lines in ``log_path`` unless ``verbose`` (:func:`ray_log_file`)."""
    saved = dict(_SETTINGS)
    _SETTINGS["verbose"] = verbose
    try:
        with contextlib.nullcontext() if verbose or log_path is None else ray_log_file(log_path):
            yield
    finally:
        _SETTINGS.update(saved)


def log_path_for(directory: str, name: str, uri: bool) -> Path:
    """Where the Ray log of sweep ``name`` goes: ``STORAGE/NAME/logs/ray.log``, or, when the
    storage is a URI (a log is appended line by line, which object stores do not do),
    ``CACHE/sweeps/NAME/ray.log`` on this machine (:func:`vgray.paths.cache_dir`)."""
    if uri:
        from vgray.paths import cache_dir

        return cache_dir() / "sweeps" / name / LOG_NAME
    return Path(directory) / "logs" / LOG_NAME


# -- Ray's log lines -----------------------------------------------------------------------------


class _ErrorLine(logging.StreamHandler):
    """Ray's ERROR lines on the console: the first line of each, and where the rest is. Its own
    format, not a formatter: ``ray.init`` sets its format on every handler of the ``ray`` logger."""

    def __init__(self, log_path: Path):
        super().__init__(sys.stderr)
        self.setLevel(logging.ERROR)
        self.log_path = log_path

    def format(self, record: logging.LogRecord) -> str:
        first = (record.getMessage().strip().splitlines() or [""])[0]
        return f"ray: {record.levelname} {first[:300]} (details in {self.log_path})"


def _ray_loggers() -> List[logging.Logger]:
    """The ``ray`` logger and those below it that hold handlers of their own, and MLflow's
    (``loggers: [mlflow]``: it logs its store's set-up on a stderr handler of its own)."""
    loggers = [logging.getLogger("ray")]
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (
            (name.startswith("ray.") or name.split(".")[0] == "mlflow")
            and isinstance(logger, logging.Logger)
            and logger.handlers
        ):
            loggers.append(logger)
    return loggers


def _console_handler(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal, not to a file: Ray's PlainRayHandler, and any stream
    handler that is not a file handler (on stderr/stdout, or MLflow's stream that forwards to
    whatever ``sys.stderr`` is)."""
    if isinstance(handler, logging.FileHandler):
        return False
    return type(handler).__name__ == "PlainRayHandler" or isinstance(handler, logging.StreamHandler)


class _NoColour(logging.Filter):
    """Ray colours a few of its messages (the dashboard URL) for terminals; a file gets them plain."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\x1b[" in message:
            record.msg, record.args = re.sub(r"\x1b\[[0-9;]*m", "", message), None
        return True


class _QuietFile(logging.FileHandler):
    """A log file whose write errors (a full disk) are not printed: the sweep's own checks of its
    storage say what went wrong, in one line."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # its last lines could not be flushed
            pass


class _LateFile(logging.Handler):
    """The log file, opened once the sweep is under way (:func:`open_log`): until then records
    wait in memory, so that a refusal (a bad resource request, found once Ray is up) leaves no
    folder behind; :meth:`spill` prints them instead when the driver fails before it opens."""

    def __init__(self, log_path: Path):
        super().__init__()
        self.log_path = log_path
        self.waiting: List[logging.LogRecord] = []
        self.file: Optional[logging.Handler] = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.handle(record)
        else:
            self.waiting.append(record)

    def open(self) -> None:
        if self.file is None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self.file = _QuietFile(self.log_path, encoding="utf-8")
            except OSError:  # a storage that refuses writes: the sweep says so; the lines are lost
                self.file = logging.NullHandler()
                return
            self.file.setFormatter(
                logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s")
            )  # Ray's own format
            self.file.addFilter(_NoColour())
            for record in self.waiting:
                self.file.handle(record)
            self.waiting.clear()

    def spill(self) -> None:
        for record in self.waiting:
            print(f"{record.levelname} {record.filename}:{record.lineno} -- {record.getMessage()}", file=sys.stderr)
        self.waiting.clear()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


class _Routing:
    """Moves the console handlers of the ``ray`` loggers aside for the log file (and a console
    handler of ERROR lines); :meth:`apply` again picks up loggers Ray configured since (Ray Data
    and Tune set up theirs when first used); :meth:`restore` puts everything back."""

    def __init__(self, log_path: Path):
        self.file = _LateFile(log_path)
        self.file.setLevel(logging.INFO)  # Ray Data logs DEBUG lines to its own file
        self.errors = _ErrorLine(log_path)
        self.moved: Dict[str, List[logging.Handler]] = {}

    def apply(self) -> None:
        for logger in _ray_loggers():
            aside = [h for h in logger.handlers if _console_handler(h) and h is not self.errors]
            for handler in aside:
                logger.removeHandler(handler)
            self.moved.setdefault(logger.name, []).extend(aside)
            if logger.name == "ray" or not logger.propagate:
                for ours in (self.file, self.errors):
                    if ours not in logger.handlers:
                        logger.addHandler(ours)

    def restore(self) -> None:
        for name, handlers in self.moved.items():
            logger = logging.getLogger(name)
            for ours in (self.file, self.errors):
                logger.removeHandler(ours)
            for handler in handlers:
                logger.addHandler(handler)
        self.file.close()


_ROUTING: List[_Routing] = []


@contextlib.contextmanager
def ray_log_file(log_path: Path) -> Iterator[None]:
    """Ray's and Tune's log lines of this driver (INFO, WARNING: the start of a local Ray, token
    authentication, Tune's experiment state) go to ``log_path`` (appended; from :func:`open_log`
    on); ERROR lines also show on stderr, one line each. vgray's own lines and a crash's traceback
    are not log records of Ray and stay on the console; a crash before the log opened prints the
    lines kept for it."""
    from vgray.errors import BadInput

    routing = _Routing(log_path)
    _ROUTING.append(routing)
    routing.apply()
    try:
        yield
    except BadInput:
        raise
    except Exception:
        routing.file.spill()
        raise
    finally:
        _ROUTING.remove(routing)
        routing.restore()


def reroute() -> None:
    """Route loggers Ray configured since the log file was opened (a no-op without one)."""
    for routing in _ROUTING:
        routing.apply()


def open_log() -> None:
    """The sweep is under way (its checks passed): Ray's lines kept so far go to the log file, and
    the next ones as they come."""
    for routing in _ROUTING:
        routing.file.open()


@contextlib.contextmanager
def tune_output_off() -> Iterator[None]:
    """Tune's own console output off while a sweep's experiment runs (``RunConfig(verbose=0)``
    does the rest): its legacy output engine, which prints nothing at verbose 0. The new engine
    (Ray's default) prints its experiment box and a TensorBoard hint into /tmp/ray at any
    verbosity, and a reporter of one's own in its place leaves Tune's default one without its
    start time (it then fails on the first trial error). ``RAY_AIR_NEW_OUTPUT=0`` is Ray's switch
    for it (its RLlib examples of custom reporters set it too), read when Tune starts."""
    saved = os.environ.get(_NEW_OUTPUT)
    os.environ[_NEW_OUTPUT] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_NEW_OUTPUT, None)
        else:
            os.environ[_NEW_OUTPUT] = saved


_NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"


# -- the live table --------------------------------------------------------------------------------


def short_names(keys: List[str]) -> Dict[str, str]:
    """Column names of the varied keys: the last dotted component (``model.aggregation`` ->
    ``aggregation``), or more components where two keys would share one."""
    names = {}
    for key in keys:
        parts = key.split(".")
        depth = 1
        while depth < len(parts) and sum(k.split(".")[-depth:] == parts[-depth:] for k in keys) > 1:
            depth += 1
        names[key] = ".".join(parts[-depth:])
    return names


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def error_line(text: str) -> str:
    """The line of an error's text that says what went wrong: the last one that is not part of
    the traceback."""
    lines = [m for m in str(text).strip().splitlines() if m.strip()]
    return next((m for m in reversed(lines) if not m.startswith((" ", "Traceback"))), "")


class LiveTable(Callback):
    """Tune's progress output for a sweep: one table, a row on each change of a trial (started,
    an epoch reported, done, failed, retried, stopped). A Tune callback, with Tune's own output
    off (:func:`tune_output_off`)."""

    def __init__(self, varied: List[str], hints: Optional[Dict[str, List[str]]] = None):
        super().__init__()
        self.varied = list(varied)
        self.names = short_names(self.varied)
        # Column widths: the header, the texts expected (``hints``: column -> texts), a minimum.
        self.widths: Dict[str, int] = dict(_MIN_WIDTHS)
        for column, texts in (hints or {}).items():
            self.widths[column] = max([self.widths.get(column, 0), *map(len, texts)])
        self.header_printed = False
        self.last: Dict[str, Dict[str, Any]] = {}  # per trial id: the figures of its last row

    @classmethod
    def for_sweep(cls, spec) -> "LiveTable":
        """The table of ``spec`` (a :class:`~vgray.distributed.spec.SweepSpec`): its columns as wide
        as its trial names and grid values (a search's sampled values are not known before)."""
        names = short_names(spec.varied)
        trials = [] if spec.search else spec.trials()
        hints = {"trial": [t.name for t in trials]}
        for key in spec.varied:
            hints[names[key]] = [_cell(t.overrides.get(key, _dotted(spec.base, key))) for t in trials]
        return cls(spec.varied, hints)

    # Tune passes setup's arguments by keyword: **info takes them all.
    def setup(self, **info) -> None:  # type: ignore[override]
        reroute()  # loggers that Tune and Ray Data configured when first used

    # -- trial events
    def on_trial_start(self, iteration: int, trials, trial, **info) -> None:
        self._row(trial, "started")
        if _SETTINGS["verbose"]:
            self._print_config(trial)

    def on_trial_result(self, iteration: int, trials, trial, result: Dict, **info) -> None:
        if "epoch" in result:
            self._row(trial, "running", result)

    def on_trial_complete(self, iteration: int, trials, trial, **info) -> None:
        result = trial.last_result or {}
        self._row(trial, "done" if result.get("vgray_finished") else "stopped", result)

    def on_trial_error(self, iteration: int, trials, trial, **info) -> None:
        self._row(trial, "failed", note=self._error(trial))

    def on_trial_recover(self, iteration: int, trials, trial, **info) -> None:
        self._row(trial, "retrying", note=self._error(trial))

    # -- printing
    def _values(self, trial) -> Dict[str, str]:
        params = decode_trial(trial.config or {})
        values = {}
        for key in self.varied:
            if key in params.overrides:
                values[key] = _cell(params.overrides[key])
            else:  # a variant that leaves it at the base value
                values[key] = _cell(_dotted(params.base, key))
        return values

    def _row(self, trial, status: str, result: Optional[Dict] = None, note: str = "") -> None:
        """One row of ``trial``; the figures it last reported where this event brings none."""
        figures = self.last.setdefault(trial.trial_id, {})
        if result:
            for key, column in (("epoch", "epoch"), ("loss", "loss"), ("val/R@1", "R@1"), ("val/R@5", "R@5")):
                if key in result:
                    figures[column] = result[key]
            if "time_total_s" in result:
                figures["time"] = result["time_total_s"]
        cells = {
            "trial": str(trial),
            "status": status,
            **{self.names[k]: v for k, v in self._values(trial).items()},
            "epoch": _cell(figures.get("epoch")),
            "loss": _cell(figures.get("loss")),
            "R@1": _recall(figures.get("R@1")),
            "R@5": _recall(figures.get("R@5")),
            "time": _duration(figures.get("time")),
        }
        printed = tuple(cells.items())
        if figures.get("_printed") == printed and not note:
            return  # nothing changed since its last row
        figures["_printed"] = printed
        self._print(cells, note)

    def _print(self, cells: Dict[str, str], note: str) -> None:
        for column, text in cells.items():  # a longer text than expected widens its column from here on
            self.widths[column] = max(self.widths.get(column, 0), len(column), len(text))
        if not self.header_printed:
            print("  ".join(c.ljust(self.widths[c]) for c in cells).rstrip(), flush=True)
            self.header_printed = True
        line = "  ".join(text.ljust(self.widths[c]) for c, text in cells.items()).rstrip()
        print(f"{line}  {note}" if note else line, flush=True)

    def _print_config(self, trial) -> None:
        """``--verbose``: the config the trial runs (its first seed), one ``key: value`` a line,
        the keys that differ from vgray's defaults (the rest would bury them)."""
        from vgray.config import Config

        params = decode_trial(trial.config or {})
        try:
            config = _flatten(params.config(params.seeds[0] if params.seeds else 0).to_dict())
        except Exception as exc:  # the trial itself will fail and say why
            print(f"  config of {trial}: cannot be loaded ({error_line(str(exc)) or type(exc).__name__})", flush=True)
            return
        defaults = _flatten(Config().to_dict())
        print(f"  config of {trial} (keys that differ from the defaults):", flush=True)
        for key, value in config.items():
            if key not in defaults or defaults[key] != value:
                print(f"    {key}: {value}", flush=True)

    @staticmethod
    def _error(trial) -> str:
        """The line of the trial's error, from its error file in Tune's local staging folder
        (before Tune syncs it to the storage), else from the storage."""
        text = None
        try:
            text = Path(trial.error_file).read_text() if trial.error_file else None
        except OSError:
            pass
        if text is None:
            try:
                error = trial.get_error()
                text = str(error) if error is not None else None
            except Exception:  # the error file cannot be read: its path says where to look
                pass
        return error_line(text)[:200] if text else f"see {trial.error_file}"


_MIN_WIDTHS = {"trial": 12, "status": 8, "epoch": 5, "loss": 7, "R@1": 5, "R@5": 5, "time": 7}


def _recall(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def _dotted(tree: Dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
