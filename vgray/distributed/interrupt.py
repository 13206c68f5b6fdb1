"""A stopped sweep as a state: what the driver does with SIGINT (Ctrl-C) and SIGTERM.

Ray Tune catches SIGINT itself while ``Tuner.fit()`` runs: it ends the experiment, saves its state
one last time and returns as if the experiment had ended, saying so only in its log. The driver
takes both signals instead (Tune's own SIGINT handler off: ``TUNE_DISABLE_SIGINT_HANDLER``) and
records which one came; during ``fit()`` it asks Tune for the same graceful end through the handler
Tune installs for SIGUSR1 (the one it uses for SIGINT), waiting for Tune to install it when the
signal comes before; outside ``fit()`` it raises :class:`KeyboardInterrupt`. A second signal ends
the driver at once (:class:`KeyboardInterrupt` wherever it is). The driver then reports the sweep
as interrupted (:func:`exit_status`: 128 + the signal, 130 for SIGINT and 143 for SIGTERM), never
as finished.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Optional

_STOPS = (signal.SIGINT, signal.SIGTERM)
_TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"
_TUNE_LOGGER = "ray.tune.tune"  # where tune.run logs


def exit_status(signum: int) -> int:
    """The shell's status of a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """SIGINT and SIGTERM while a sweep's driver runs (a ``with`` block; a no-op off the main
    thread, where Python gives no signals). ``signum``: the first that came, else None."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.active = threading.current_thread() is threading.main_thread()
        self._fitting = False
        self._asked = False
        self._saved: dict = {}
        self._env: Optional[str] = None

    def __enter__(self) -> "StopSignals":
        if not self.active:
            return self
        self._env = os.environ.get(_TUNE_SIGINT)
        os.environ[_TUNE_SIGINT] = "1"
        for signum in _STOPS:
            self._saved[signum] = signal.signal(signum, self._handle)
        self._saved[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._unarmed)
        return self

    def retake(self) -> None:
        """Install the handlers again: ``ray.init`` installs the Ray core's own failure handler for
        SIGTERM in the driver (it prints a stack and aborts, exit 134), over the one set before."""
        if self.active:
            for signum in _STOPS:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc: Any) -> None:
        if not self.active:
            return
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        if self._env is None:
            os.environ.pop(_TUNE_SIGINT, None)
        else:
            os.environ[_TUNE_SIGINT] = self._env

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None or not self._fitting:  # a second signal, or no Tune to ask
            self.signum = self.signum or signum
            raise KeyboardInterrupt
        self.signum = signum
        self._ask_tune()

    # -- during Tuner.fit() -----------------------------------------------------------------------

    def fitting(self) -> "_Fitting":
        """A ``with`` block around ``Tuner.fit()``: a signal then ends the experiment as Tune ends
        it on SIGINT (its state saved, the running trials left to resume)."""
        return _Fitting(self)

    def _unarmed(self, signum: int, frame: Any) -> None:
        """SIGUSR1 while Tune's handler is not installed: nothing to do."""

    def _ask_tune(self) -> None:
        """Tune's SIGUSR1 handler, once it has installed it (a thread waits for it meanwhile)."""
        if self._asked:
            return
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler) and handler != self._unarmed:
            self._asked = True
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        threading.Thread(target=self._wait_for_tune, daemon=True).start()

    def _wait_for_tune(self) -> None:
        while self._fitting and not self._asked:
            handler = signal.getsignal(signal.SIGUSR1)
            if callable(handler) and handler != self._unarmed:
                self._asked = True
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.05)


class _Fitting:
    def __init__(self, stop: StopSignals) -> None:
        self.stop = stop

    def __enter__(self) -> None:
        stop = self.stop
        if stop.signum is not None:  # came between two stages
            raise KeyboardInterrupt
        if stop.active:  # not the handler an earlier stage's Tune left
            signal.signal(signal.SIGUSR1, stop._unarmed)
        stop._fitting, stop._asked = True, False
        logging.getLogger(_TUNE_LOGGER).addFilter(self._quiet)

    def __exit__(self, *exc: Any) -> None:
        stop = self.stop
        stop._fitting = False
        if stop.active:
            signal.signal(signal.SIGUSR1, stop._unarmed)
        logging.getLogger(_TUNE_LOGGER).removeFilter(self._quiet)

    def _quiet(self, record: logging.LogRecord) -> bool:
        """Tune's error line about the trials an interruption left unfinished (they resume): the
        driver's own line says what happened."""
        return self.stop.signum is None or record.levelno < logging.ERROR
