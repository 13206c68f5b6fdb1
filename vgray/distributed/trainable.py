"""What runs inside a sweep trial: the Tune trainable.

The trainable turns Tune's dict into the validated config (:func:`vgray.distributed.spec.decode_trial`)
and calls the library: ``train`` (with a ``report`` callback that forwards each epoch's metrics and the
run folder as a Tune checkpoint, and publishes the trial's progress as Ray metrics:
:func:`vgray.distributed.tracking.publish`) or, for ``task: eval``, the final test the training loop ends with
(:func:`vgray.evaluate.evaluate.final_test`). The training loop and evaluation know nothing of Ray.
Each seed's row goes to the sweep's results actor, durably, before the next seed starts.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict

from vgray.atomic import write_text
from vgray.distributed.descriptors import trial_extractor
from vgray.distributed.results import find_results_actor
from vgray.distributed.spec import TrialParams, decode_trial
from vgray.distributed.storage import Storage
from vgray.results import make_row

STATE_FILE = "trial.json"  # in the trial's checkpoint: the seeds done and the one running


def _quiet(*args) -> None:
    """Trials print nothing: their figures go to Tune and to the results actor."""


def trainable(config: Dict[str, Any]) -> None:
    """The Tune trainable: one trial of the sweep, from Tune's dict."""
    run_trial(decode_trial(config))


def run_trial(trial: TrialParams) -> None:
    """Run ``trial``'s seeds in turn; each seed's row goes to the results actor before the next.
    A retried or resumed trial skips the seeds it finished and continues the one it was running
    from its last epoch."""
    import ray
    from ray import tune

    from vgray.distributed.devices import use_ray_devices

    use_ray_devices()  # the trial's device is the GPU of its trainer bundle, or the CPU
    trial_id = tune.get_context().get_trial_id()
    work = Path(tempfile.mkdtemp(prefix=f"vgray-{trial_id}-"))
    done: Dict[int, Dict[str, Any]] = {}
    running = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry or a resumed sweep: continue from the last epoch
        with checkpoint.as_directory() as d:
            shutil.copytree(d, work, dirs_exist_ok=True)
        state = _read_json(work / STATE_FILE)
        done = {int(k): v for k, v in state.get("done", {}).items()}
        running = state.get("running")
    actor = find_results_actor(trial.sweep)
    # The second stage: start from the model a first-stage trial left.
    start = _fetch_model(trial.directory, trial.after, work) if trial.after else None

    through_ray = 0
    for seed in trial.seeds:
        if seed in done:
            continue
        cfg = trial.config(seed, resume_from=start)
        several = len(trial.seeds) > 1
        if trial.task == "train":
            result = _train(cfg, work, seed, done, resume=running == seed, sweep=trial.sweep, resources=trial.resources)
        else:
            result = _evaluate(cfg)
            through_ray += result["ray_data_images"]
        # A second stage's seeds start from different files: their key is that of the config as
        # the sweep states it (model.resume_from: trial:...), shared by the seeds.
        row = make_row(
            cfg,
            f"{trial_id}-s{seed}" if several else trial_id,
            f"{trial.label}-s{seed}" if several else trial.label,
            result,
            config_key=trial.config(seed).key() if start else None,
        )
        if trial.keep_model and trial.task == "train":
            _keep_model(trial.directory, row["trial_name"], work / f"s{seed}" / "best.pt")
        ray.get(actor.add.remote(row))  # durable on disk before we go on
        done[seed] = {k: v for k, v in row.items() if k.startswith(("val/", "test/"))}
        shutil.rmtree(work / f"s{seed}", ignore_errors=True)  # the row holds what matters; free the disk
    final = _mean_metrics(done)
    if trial.task == "eval":
        final["ray_data_images"] = through_ray  # images this run extracted through Ray Data
    final["vgray_finished"] = 1  # (Tune fills a "done" key of its own)
    _write_json(work / STATE_FILE, {"done": done, "running": None})
    tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(work)))
    shutil.rmtree(work, ignore_errors=True)


def _train(
    cfg,
    work: Path,
    seed: int,
    done: Dict[int, Dict[str, Any]],
    resume: bool,
    sweep: str,
    resources: Dict[str, Any],
) -> Dict[str, Any]:
    """Train one seed in ``work/s<seed>``, reporting every epoch to Tune with ``work`` as the
    checkpoint, and to Ray's metrics tagged with the ``sweep``'s and the trial's names; ``resume``:
    continue from its ``last.pt``. With ``train.workers`` > 1 a group of data-parallel workers
    trains it (:mod:`vgray.distributed.ddp`, ``resources`` per worker) and rank 0's files land in
    the same folder before the same report."""
    from ray import tune

    from vgray.distributed.tracking import TimedExtractor, publish
    from vgray.train.loop import train

    run_dir = work / f"s{seed}"
    resume = resume and (run_dir / "last.pt").is_file()
    trial_name = tune.get_context().get_trial_name()
    if cfg.train.workers > 1:
        from vgray.distributed.ddp import run_group, worker_shape

        def report_group(metrics, out_dir):
            _write_json(work / STATE_FILE, {"done": done, "running": seed})
            figures = {**metrics, "seed": seed, "workers": cfg.train.workers}
            publish(figures, sweep, trial_name)
            tune.report(figures, checkpoint=tune.Checkpoint.from_directory(str(work)))

        return run_group(cfg, run_dir, worker_shape(resources), resume=resume, report=report_group)
    # Mining refreshes, validation and the test of sets above data.ray_threshold go through Ray
    # Data, inside this trial's placement group (its extraction bundle); timed for the reports.
    extractor = trial_extractor(cfg, log=_quiet)
    timed = TimedExtractor(extractor)

    def report(metrics, out_dir):
        _write_json(work / STATE_FILE, {"done": done, "running": seed})
        through_ray = {"ray_data_images": extractor.images_through_ray} if extractor is not None else {}
        figures = {**metrics, **timed.rate(), **through_ray, "seed": seed}
        publish(figures, sweep, trial_name)  # the dashboard's metrics view, before Tune may stop the trial
        tune.report(figures, checkpoint=tune.Checkpoint.from_directory(str(work)))

    return train(
        cfg,
        run_dir,
        report=report,
        resume=resume,
        progress=False,
        log=_quiet,
        extractor=timed,
    )


def _evaluate(cfg) -> Dict[str, Any]:
    """``task: eval``: the model built once (seeded) and tested as training's final test does, plus
    its extraction time and ``ray_data_images``, the images extracted through Ray Data."""
    from vgray.evaluate.evaluate import final_test, test_sets
    from vgray.models import build_model
    from vgray.models.profile import extraction_ms
    from vgray.runtime import Runtime
    from vgray.seeding import seed_everything

    extractors = []

    def extractor_for(one):
        # Test sets above data.ray_threshold go through Ray Data in the trial's placement group.
        extractor = trial_extractor(one, log=_quiet)
        if extractor is not None:
            extractors.append(extractor)
        return extractor

    rt = Runtime.from_config(cfg, progress=False)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    result = final_test(cfg, model, rt, test_sets(cfg), extractor_for=extractor_for)
    result["extraction_ms"] = extraction_ms(model, cfg.data.image_size, rt)
    result["ray_data_images"] = sum(e.images_through_ray for e in extractors)
    return result


def _keep_model(directory: str, name: str, best: Path) -> None:
    """``STORAGE/NAME/models/<trial>.pt``: the best model with its config and scores (no optimizer
    or mining state), written before the trial's row so that a row means its model is there."""
    import torch

    from vgray.checkpoint import load

    ck = load(best)
    slim = {k: v for k, v in ck.items() if k in ("config", "model", "epoch", "best_r5", "history")}
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    Storage(directory).write_bytes(f"models/{name}.pt", buffer.getvalue())


def _fetch_model(directory: str, name: str, work: Path) -> str:
    """A local path to the model trial ``name`` kept; an error when it left none."""
    storage = Storage(directory)
    key = f"models/{name}.pt"
    if not storage.exists(key):
        raise RuntimeError(
            f"model.resume_from: trial {name} left no model in {storage.path('models')} "
            f"(it failed or was stopped early); this trial starts from it"
        )
    if not storage.uri:
        return storage.path(key)
    local = work / f"from-{name}.pt"
    local.write_bytes(storage.read_bytes(key))
    return str(local)


def _mean_metrics(done: Dict[int, Dict[str, Any]]) -> Dict[str, float]:
    """What the searcher sees: every metric averaged over the trial's seeds."""
    keys = {k for m in done.values() for k in m}
    out = {}
    for k in sorted(keys):
        vals = [m[k] for m in done.values() if isinstance(m.get(k), (int, float))]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


def _write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj))


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
