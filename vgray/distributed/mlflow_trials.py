"""Tune's MLflow logger shaped for sweeps (``loggers: [mlflow]``); apart from
:mod:`vgray.distributed.tracking` because importing it imports mlflow, which trials do not need."""

from __future__ import annotations

import math
import os
import re
import time
from typing import TYPE_CHECKING, Any, Dict, Optional

import mlflow  # noqa: F401  (here, not first in the callback's set-up: its loggers exist before the sweep routes them)
from ray.air.integrations.mlflow import MLflowLoggerCallback

from vgray.distributed.spec import decode_trial

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Reported figures an MLflow run receives (Tune's own bookkeeping stays out).
TRACKED_PREFIXES = ("val/", "best_val/", "test/")
TRACKED_KEYS = ("epoch", "loss", "train_time_s", "mining_refresh_s", "extraction_images_per_s", "ray_data_images")


def mlflow_name(key: str) -> str:
    """A metric or parameter name MLflow takes (letters, digits, ``_ - . / :`` and spaces):
    ``val/R@5`` -> ``val/R_at_5``."""
    return re.sub(r"[^/\w.\- :]", "_", key.replace("@", "_at_"))


def trial_params(config: Dict[str, Any], trial_name: str) -> Dict[str, str]:
    """What an MLflow run records as its parameters: the trial's values of the sweep's varied keys,
    its seeds and its name (not Tune's whole dict, which holds the base config and internals)."""
    params = decode_trial(config)
    out = {mlflow_name(k): str(params.overrides[k]) for k in params.varied if k in params.overrides}
    out["seed" if len(params.seeds) == 1 else "seeds"] = ",".join(str(s) for s in params.seeds)
    out["trial"] = trial_name
    return out


def tracked_metrics(result: Dict[str, Any]) -> Dict[str, float]:
    """The figures of a Tune result an MLflow run receives, under names MLflow takes."""
    out = {}
    for key, value in result.items():
        if not (key.startswith(TRACKED_PREFIXES) or key in TRACKED_KEYS):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[mlflow_name(key)] = float(value)
    return out


class MLflowTrials(MLflowLoggerCallback):
    """Tune's MLflow logger (it runs in the driver), shaped for sweeps: one run per trial, named as
    the trial, with :func:`trial_params` as parameters and :func:`tracked_metrics` at each report
    (step: Tune's iteration, one per epoch, the last one the final test). The default store keeps
    its artifacts beside it in the sweep's folder. A resumed sweep continues each trial's run (found
    by the ``vgray.trial_id`` tag) instead of starting another."""

    def __init__(self, tracking_uri: str, experiment: str, artifacts: Optional[str], sweep: str):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment, tags={"vgray.sweep": sweep})
        self.artifacts = artifacts
        self._client: Optional[MlflowClient] = None  # made by setup

    def setup(self, *args, **kwargs):
        from mlflow import MlflowClient

        if self.artifacts:
            os.makedirs(self.artifacts, exist_ok=True)
        self.mlflow_util.setup_mlflow(
            tracking_uri=self.tracking_uri, experiment_name=self.experiment_name, artifact_location=self.artifacts
        )
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        self._trial_runs = {}

    def log_trial_start(self, trial):
        if trial not in self._trial_runs:
            self._trial_runs[trial] = self._run_of(trial)

    def _run_of(self, trial) -> str:
        """The run of ``trial``: the one an earlier driver started for it, else a new one."""
        experiment = self.mlflow_util.experiment_id
        assert self._client is not None and self.tags is not None  # setup ran first; __init__ gave tags
        found = self._client.search_runs(
            [experiment], filter_string=f"tags.`vgray.trial_id` = '{trial.trial_id}'", max_results=1
        )
        if found:
            return found[0].info.run_id
        from mlflow.entities import Param

        run = self._client.create_run(
            experiment,
            run_name=str(trial),
            tags={**self.tags, "vgray.trial_id": trial.trial_id, "trial_name": str(trial)},
        )
        params = [Param(k, v) for k, v in trial_params(trial.config, str(trial)).items()]
        self._client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def log_trial_result(self, iteration: int, trial, result: Dict):
        from mlflow.entities import Metric

        self.log_trial_start(trial)
        step = int(result.get("training_iteration") or iteration)
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in tracked_metrics(result).items()]
        if metrics:
            assert self._client is not None  # setup ran first
            self._client.log_batch(self._trial_runs[trial], metrics=metrics)

    def log_trial_end(self, trial, failed: bool = False):
        if trial in self._trial_runs:
            assert self._client is not None  # setup ran first
            self._client.set_terminated(self._trial_runs[trial], status="FAILED" if failed else "FINISHED")
