"""How a running sweep is followed outside its console: the Ray dashboard's jobs and metrics views,
TensorBoard, and MLflow.

- Jobs view: the driver's Ray job carries the sweep's name as ``job_name`` in its metadata
  (:func:`job_metadata`), the "Job name" column of the dashboard's jobs table.
- Metrics view (and any Prometheus scrape of a node's metrics port): each trial publishes its
  progress as Ray gauges tagged ``sweep`` and ``trial`` (:func:`publish`, :data:`TRIAL_GAUGES`),
  from its epoch reports; Prometheus shows them with Ray's ``ray_`` prefix.
- TensorBoard: Tune's own logger writes every reported figure to ``STORAGE/NAME/<trial>/events.*``
  (``ray/tune/val/R_5``: TensorBoard's tags take no ``@``); nothing to do here but say where
  (:func:`follow_lines`).
- MLflow (``loggers: [mlflow]``): Tune's MLflow callback, shaped for sweeps
  (:class:`vgray.distributed.mlflow_trials.MLflowTrials`, apart: it imports mlflow).

The trial side (gauges, :class:`TimedExtractor`) runs in the trial's process; the MLflow callback
in the driver's, where Tune calls its loggers.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TypedDict

from vgray.distributed.spec import SweepSpec
from vgray.errors import BadInput, shown

# -- the jobs view ---------------------------------------------------------------------------------


def job_metadata(spec: SweepSpec) -> Dict[str, str]:
    """The metadata of the sweep driver's Ray job: ``job_name`` (what the dashboard's jobs table
    shows as the job's name) is the sweep's name; the storage folder says where its results go."""
    return {"job_name": spec.name, "vgray_sweep": spec.name, "vgray_directory": spec.directory}


# -- the metrics view: Ray gauges of each trial ------------------------------------------------------

# key of a trial's epoch report -> (Ray metric, description); Prometheus adds the prefix ``ray_``.
TRIAL_GAUGES = {
    "epoch": ("vgray_trial_epoch", "epochs the sweep trial has finished (of its current seed)"),
    "val/R@5": ("vgray_trial_val_recall_at_5", "the sweep trial's validation R@5 (%) after its last epoch"),
    "extraction_images_per_s": (
        "vgray_trial_extraction_images_per_second",
        "images per second the trial's last epoch extracted (mining cache and validation)",
    ),
    "mining_refresh_s": (
        "vgray_trial_mining_refresh_seconds",
        "seconds the trial's last epoch spent refreshing its mining cache",
    ),
}
TAG_KEYS = ("sweep", "trial")
_GAUGES: Dict[str, Any] = {}  # one per metric and process: a reused trial actor keeps its gauges


def publish(metrics: Dict[str, Any], sweep: str, trial: str) -> None:
    """Set the gauges of :data:`TRIAL_GAUGES` that ``metrics`` (an epoch's report) holds, tagged
    with the ``sweep`` and ``trial`` names. Ray exports them from this process every
    ``metrics_report_interval_ms`` (10 s by default)."""
    from ray.util.metrics import Gauge

    tags = {"sweep": sweep, "trial": trial}
    for key, (name, description) in TRIAL_GAUGES.items():
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if name not in _GAUGES:
            _GAUGES[name] = Gauge(name, description=description, tag_keys=TAG_KEYS)
        _GAUGES[name].set(float(value), tags=tags)


class TimedExtractor:
    """An extractor (the contract of :func:`vgray.evaluate.evaluate.evaluate_split`) that passes
    every call to ``inner`` (None: in this process) and counts the images and seconds, so that a
    trial can report its extraction speed epoch by epoch (:meth:`rate`)."""

    def __init__(self, inner: Optional[Callable] = None):
        self.inner = inner
        self.images, self.seconds = 0, 0.0
        self._mark = (0, 0.0)

    def __call__(self, model, paths: Sequence[str], transform, rt, features_dim: int, desc: str = "images"):
        from vgray.evaluate.extract import extract_descriptors

        start = time.perf_counter()
        out = (self.inner or extract_descriptors)(model, paths, transform, rt, features_dim, desc)
        self.seconds += time.perf_counter() - start
        self.images += len(paths)
        return out

    def rate(self) -> Dict[str, float]:
        """``{"extraction_images_per_s": ...}`` over the calls since the last ``rate`` (empty when
        nothing was extracted since)."""
        images, seconds = self.images - self._mark[0], self.seconds - self._mark[1]
        self._mark = (self.images, self.seconds)
        return {"extraction_images_per_s": images / seconds} if images and seconds > 0 else {}


# -- MLflow ----------------------------------------------------------------------------------------


class _MLflowStore(TypedDict):
    tracking_uri: str
    experiment: str
    artifacts: Optional[str]


def mlflow_store(spec: SweepSpec) -> _MLflowStore:
    """Where ``loggers: [mlflow]`` writes: ``tracking_uri`` (``mlflow.tracking_uri``, default a
    SQLite file in the sweep's folder: MLflow 3 refuses file stores), ``experiment`` (default the
    sweep's name) and ``artifacts`` (the default store's artifact folder beside it; None: the
    tracking server's default)."""
    given = spec.mlflow.tracking_uri if spec.mlflow else None
    local = spec.directory.rstrip("/")
    return {
        "tracking_uri": given or f"sqlite:///{local}/mlflow.db",
        "experiment": (spec.mlflow.experiment if spec.mlflow else None) or spec.name,
        "artifacts": None if given else f"{local}/mlartifacts",
    }


def check_trackers(spec: SweepSpec, timeout: float = 5.0) -> None:
    """Before anything starts: a tracking server that ``loggers: [mlflow]`` names (an http(s)
    ``mlflow.tracking_uri``) must accept a connection, else MLflow's retries would fail the sweep
    from inside Tune's set-up of its callbacks. The driver alone writes to it (Tune calls its
    loggers there), so this machine's reach is the one that counts."""
    if "mlflow" not in spec.loggers:
        return
    import socket
    from urllib.parse import urlsplit

    uri = mlflow_store(spec)["tracking_uri"]
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https"):
        return
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise BadInput(f"mlflow.tracking_uri={shown(uri)} names no host and port; give http://HOST:PORT")
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise BadInput(
            f"mlflow.tracking_uri={shown(uri)}: no MLflow server answers at {parts.hostname}:{port} "
            f"({exc.strerror or type(exc).__name__}); start it (mlflow server --port {port}) or "
            f"leave tracking_uri out for STORAGE/NAME/mlflow.db"
        ) from None


def tracker_callbacks(spec: SweepSpec) -> List[Any]:
    """The Tune callbacks of the sweep's ``loggers`` (Tune adds its CSV, JSON and TensorBoard
    loggers itself)."""
    if "mlflow" not in spec.loggers:
        return []
    from vgray.distributed.mlflow_trials import MLflowTrials  # imports mlflow: only where it is used

    store = mlflow_store(spec)
    return [MLflowTrials(store["tracking_uri"], store["experiment"], store["artifacts"], spec.name)]


# -- what the user is told -------------------------------------------------------------------------


def follow_lines(spec: SweepSpec) -> List[str]:
    """The commands that show a sweep's logs: TensorBoard on its folder, and the MLflow UI on its
    store when ``loggers`` names mlflow."""
    lines = [f"TensorBoard: tensorboard --logdir {spec.directory}"]
    if "mlflow" in spec.loggers:
        store = mlflow_store(spec)
        lines.append(
            f"MLflow: mlflow ui --backend-store-uri {store['tracking_uri']} (experiment {store['experiment']})"
        )
    return lines
