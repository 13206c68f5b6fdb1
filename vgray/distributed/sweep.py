"""``vgray sweep``: the driver that runs a sweep file as Ray Tune trials.

It joins or starts Ray, checks the storage and the cluster's resources, starts the results actor,
writes ``plan.json``, and runs the trials (:mod:`vgray.distributed.trainable`) with Tune, a second
stage after the first when trials start from first-stage models. Trials that end without their row
(failed after their retries, stopped by ASHA) get one here.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from vgray.distributed.descriptors import GROUP_DRIVER
from vgray.distributed.spec import Dimension, SweepSpec, Trial, decode_trial, param_space
from vgray.distributed.storage import Storage, storage_problem
from vgray.distributed.tracking import check_trackers, job_metadata, tracker_callbacks
from vgray.errors import BadInput
from vgray.results import PLAN_FILE, make_plan, make_row, summary_markdown

if TYPE_CHECKING:
    from vgray.config import Config


def init_ray(
    address: Optional[str], num_cpus: Optional[int] = None, metadata: Optional[Dict[str, str]] = None
) -> Optional[str]:
    """Join ``address`` (or ``RAY_ADDRESS``) with the cluster's own settings, else start a local Ray
    whose every service listens on 127.0.0.1 only (:func:`vgray.distributed.cluster.init_local_ray`),
    the dashboard included. Token authentication stays as Ray sets it (on by default). ``metadata``:
    the driver job's (a sweep's ``job_name``: :func:`vgray.distributed.tracking.job_metadata`, the
    name the dashboard's jobs view shows; a job submitted through the Jobs API keeps its own where
    both set a key). An address that is not one, or where no cluster can be joined, is bad input
    naming where it came from (``--address`` or ``RAY_ADDRESS``), one line. Returns the dashboard URL."""
    import ray

    from vgray.distributed.cluster import init_local_ray

    if ray.is_initialized():
        return None
    address, source = ray_address(address)
    job = ray.job_config.JobConfig(metadata=dict(metadata or {}))
    if address is None:
        ctx = init_local_ray(num_cpus=num_cpus, dashboard=True, namespace="vgray", log_to_driver=False, job_config=job)
    else:
        check_address(address, source)
        try:
            ctx = ray.init(address=address, namespace="vgray", log_to_driver=False, job_config=job)
        except (ConnectionError, TimeoutError, ValueError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise BadInput(f"{source} {address}: cannot join a Ray cluster there ({why})") from None
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def join_ray(address: Optional[str], num_cpus: Optional[int] = None) -> None:
    """:func:`init_ray`, for a command that needs no dashboard URL."""
    init_ray(address, num_cpus)


def ray_address(address: Optional[str]) -> Tuple[Optional[str], str]:
    """The address Ray is joined at and where it came from: ``address`` (``--address``), else
    ``RAY_ADDRESS`` (empty is unset, as Ray reads it), else ``(None, "")``: a local Ray (``local``
    too: a new Ray of this process's own, :func:`init_ray`'s on 127.0.0.1). An empty
    ``--address`` is refused (an empty value is never a default)."""
    if address is not None:
        if not address.strip():
            raise BadInput(
                "--address is empty; give auto, HOST:PORT or ray://HOST:PORT, or leave it out for a local Ray"
            )
        return (address, "--address") if address != "local" else (None, "")
    env = os.environ.get("RAY_ADDRESS")
    return (env, "RAY_ADDRESS") if env and env != "local" else (None, "")


# ``auto``, or HOST:PORT (a name, an IPv4 address or a bracketed IPv6 one), optionally ray://.
_ADDRESS = re.compile(r"^(?:ray://)?(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


def check_address(address: str, source: str = "--address", timeout_s: float = 5.0) -> None:
    """Refuse (:class:`BadInput`, naming ``source``: ``--address`` or ``RAY_ADDRESS``) an address
    that is neither ``auto`` (nor ``local``: a Ray of this process's own) nor ``[ray://]HOST:PORT``,
    or a ``HOST:PORT`` where nothing takes a connection within ``timeout_s``, before anything
    starts (Ray itself would retry for a minute before saying so)."""
    if address in ("auto", "local"):
        return
    m = _ADDRESS.match(address)
    if not (m and 0 < int(m.group(1)) < 65536):
        raise BadInput(f"{source} {address!r} is not a Ray cluster address; give auto, HOST:PORT or ray://HOST:PORT")
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    try:
        socket.create_connection((host, int(m.group(1))), timeout=timeout_s).close()
    except OSError as exc:
        raise BadInput(f"{source} {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def local_ray(address: Optional[str]) -> bool:
    """Whether :func:`init_ray` would start a Ray of its own (no address, no ``RAY_ADDRESS``, none
    up in this process): then the machine's CPUs and GPUs are the cluster, known before it starts."""
    import ray

    return not ray.is_initialized() and ray_address(address)[0] is None


def run_sweep(
    spec: SweepSpec,
    address: Optional[str] = None,
    resume: bool = False,
    num_cpus: Optional[int] = None,
    out=print,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Run (or resume) ``spec`` on Ray; returns ``{"summary": markdown, "failed": n, "trials": n,
    "directory": STORAGE/NAME, "log": Ray's log file}``, plus ``"storage"`` (why) when the storage
    stopped taking writes, or ``"interrupted"`` (the signal's name: SIGINT, SIGTERM) with
    ``"exit"`` (130, 143), ``"rows"`` and ``"resumable"`` when a signal stopped it
    (:mod:`vgray.distributed.interrupt`). The console shows one start line, then the live table of
    the trials (:mod:`vgray.distributed.live`); Ray's and Tune's log lines go to the log file unless
    ``verbose``, which also prints each trial's config. One driver at a time writes a sweep's folder
    (:mod:`vgray.distributed.lock`): a second is refused before it writes anything."""
    from vgray.distributed.interrupt import StopSignals
    from vgray.distributed.live import console, log_path_for
    from vgray.distributed.lock import check_free, sweep_lock

    # Every check that can be made before an effect is made first: no other run holds the sweep's
    # folder, the folder (read only), the Ray address, a local Ray's resources against this
    # machine, then the storage probe (which leaves nothing); then the folder's lock is taken, and
    # only then Ray starts (or is joined) and the resources meet the cluster's real nodes.
    check_free(spec.directory, spec.name)
    _check_sweep_folder(spec, resume)
    if local_ray(address):
        _check_resources(spec, [machine_shape(num_cpus)])
    elif not _ray_up():
        joined, source = ray_address(address)
        if joined is not None:
            check_address(joined, source)
    _check_storage(spec)
    check_trackers(spec)
    log = log_path_for(spec.directory, spec.name, uri="://" in spec.directory)
    with sweep_lock(spec.directory, spec.name), StopSignals() as stop, console(log, verbose):
        try:
            result = _run(spec, address, resume, num_cpus, out, log if not verbose else None, stop)
        except KeyboardInterrupt:  # a signal outside Tune's experiment, or a second one
            result = _interrupted(spec, stop.signum)
        return {**result, "log": str(log)}


def _ray_up() -> bool:
    import ray

    return ray.is_initialized()


def _run(
    spec: SweepSpec, address: Optional[str], resume: bool, num_cpus: Optional[int], out, log: Optional[Path], stop
) -> Dict[str, Any]:
    """:func:`run_sweep` once its checks have passed: Ray up, the results actor, the plan, the
    stages' Tune experiments, the rows of trials that ended without theirs."""
    import ray
    from ray import tune

    from vgray.distributed.descriptors import trial_resources
    from vgray.distributed.live import open_log, reroute
    from vgray.distributed.results import get_results_actor
    from vgray.distributed.trainable import trainable

    url = init_ray(address, num_cpus, metadata=job_metadata(spec))
    stop.retake()  # from the Ray core's SIGTERM handler
    reroute()  # the loggers ray.init configured
    _check_resources(spec)
    open_log()  # the sweep is under way: its folder may be written
    out(_start_line(spec, url, log))
    actor = get_results_actor(spec.name, spec.directory, spec.varied)
    ray.get(actor.rows.remote())  # the actor is up (and has reloaded any earlier rows)
    write_plan(spec, url)

    # Per trial: a placement group of the trainer's bundle and, when it may use Ray Data, an
    # extraction bundle that its Ray Data tasks and actors run in.
    resourced = tune.with_resources(trainable, trial_resources(spec))
    result = _stages(spec, resourced, resume, out, actor, stop)
    if "storage" in result:
        return result
    if stop.signum is not None:
        return _interrupted(spec, stop.signum, url)
    summary = ray.get(actor.summary_markdown.remote())
    write_plan(spec, url, finished=True)
    return {**result, "summary": summary, "directory": spec.directory}


def _stages(spec: SweepSpec, resourced, resume: bool, out, actor, stop) -> Dict[str, Any]:
    """The sweep's Tune experiments, one stage after the other: ``{"failed": n, "trials": n}``, or
    what :func:`run_sweep` returns when the storage stopped taking writes; a signal (``stop``)
    ends them early, the unfinished trials left without rows (they resume)."""
    import ray

    from vgray.distributed.live import reroute, tune_output_off
    from vgray.distributed.storage_watch import STORAGE_TROUBLE

    stages = [None] if spec.search else spec.stages()
    failed = trials = 0
    for number, stage in enumerate(stages):
        if number:
            assert stage is not None  # only a grid has later stages
            out(f"sweep {spec.name}: stage {number + 1}, {len(stage)} trials starting from first-stage models")
        try:
            tuner = _tuner(spec, resourced, stage, number, resume, out)
            reroute()  # the loggers of what the tuner's callbacks imported (MLflow's)
            with tune_output_off(), stop.fitting():  # the LiveTable's console instead
                grid = tuner.fit()
        except Exception:  # Tune's own writes of the experiment state may be the first to fail
            reason = storage_problem(spec.directory)
            if not reason:
                raise
            STORAGE_TROUBLE.setdefault(spec.directory, reason)
        if spec.directory in STORAGE_TROUBLE:  # rows for unfinished trials would be wrong: they resume
            rows = ray.get(actor.rows.remote())
            return {
                "summary": ray.get(actor.summary_markdown.remote()),
                "failed": 0,
                "directory": spec.directory,
                "trials": len(rows),
                "storage": f"{spec.directory} cannot be written "
                f"({STORAGE_TROUBLE[spec.directory]}); {len(rows)} row(s) kept in results.parquet",
            }
        if stop.signum is not None:  # the running trials were stopped to resume, not ended
            break
        failed += _rows_for_unfinished(grid, actor)
        _prune_checkpoints(grid)
        trials += len(grid)
    return {"failed": failed, "trials": trials}


def _interrupted(spec: SweepSpec, signum: Optional[int], url: Optional[str] = None) -> Dict[str, Any]:
    """What :func:`run_sweep` returns for a sweep a signal stopped: its rows so far (read from
    ``results.parquet``, where each was written before the results actor acknowledged it), the
    plan marked interrupted (when the sweep got as far as writing one), the exit status."""
    import signal

    from vgray.distributed.interrupt import exit_status, signal_name
    from vgray.distributed.results import ResultsStore

    signum = signum or signal.SIGINT  # a KeyboardInterrupt raised before the handler was in place
    storage = Storage(spec.directory, create=False)
    store = ResultsStore(spec.directory, spec.varied) if storage.exists(PLAN_FILE) else None
    if store is not None:
        try:
            write_plan(spec, url, interrupted=signal_name(signum))
        except Exception:  # Ray or the storage half-way: the plan stays as it was (unfinished)
            pass
    rows = len(store.rows) if store is not None else 0
    return {
        "planned": planned_rows(spec),
        "interrupted": signal_name(signum),
        "exit": exit_status(signum),
        "summary": summary_markdown(store.summary()) if store is not None and store.rows else "",
        "failed": 0,
        "trials": rows,
        "rows": rows,
        "directory": spec.directory,
        "resumable": storage.exists("tuner.pkl"),
    }


def _start_line(spec: SweepSpec, url: Optional[str], log: Optional[Path]) -> str:
    """The sweep's one start line: trials, the Ray dashboard, the results folder, Ray's log."""
    parts = [f"sweep {spec.name}: {spec.num_trials} trials"]
    if url:
        parts.append(f"Ray dashboard: {url}")
    parts.append(f"results in {spec.directory}")
    if log is not None:
        parts.append(f"Ray's log in {log}")
    return "; ".join(parts)


def _prune_checkpoints(grid) -> None:
    """Delete the checkpoints of the finished trials of ``grid`` but their last (which records
    their seeds done): Tune keeps :data:`CHECKPOINTS_KEPT`, which only a running trial needs.
    Runs after ``fit()``, whose last snapshot of the experiment state holds them finished."""
    import posixpath

    from pyarrow import fs as pafs

    for result in grid:
        latest = result.checkpoint
        if result.error is not None or latest is None or not (result.metrics or {}).get("vgray_finished"):
            continue
        folder = posixpath.dirname(latest.path.rstrip("/"))
        try:
            for info in latest.filesystem.get_file_info(pafs.FileSelector(folder)):
                if (
                    info.type == pafs.FileType.Directory
                    and info.base_name.startswith("checkpoint_")
                    and info.path.rstrip("/") != latest.path.rstrip("/")
                ):
                    latest.filesystem.delete_dir(info.path)
        except OSError:  # space is all that is lost; the sweep's results are written
            continue


def _check_sweep_folder(spec: SweepSpec, resume: bool) -> None:
    """The sweep's folder holds this sweep's Tune state exactly when resuming. Only reads: a
    refusal leaves no folder behind."""
    try:
        exists = Storage(spec.directory, create=False).exists("tuner.pkl")
    except (OSError, ValueError) as exc:  # a URI pyarrow cannot reach: the storage probe says why
        exists = False
        if resume:
            raise BadInput(
                f"--resume: storage={spec.storage}: {spec.directory} cannot be read "
                f"({(str(exc).strip().splitlines() or [type(exc).__name__])[0]})"
            ) from None
    if resume and not exists:
        raise BadInput(
            f"--resume: no sweep to resume in {spec.directory} (no tuner.pkl); run it without --resume to start it"
        )
    if not resume and exists:
        raise BadInput(
            f"{spec.directory} already holds sweep '{spec.name}'; pass --resume to continue it, or --storage elsewhere"
        )


def _check_storage(spec: SweepSpec) -> None:
    """The sweep's folder must take writes before anything launches (the probe leaves nothing)."""
    reason = storage_problem(spec.directory)
    if reason:
        raise BadInput(f"storage={spec.storage}: {spec.directory} cannot be written ({reason})")


def _check_resources(spec: SweepSpec, machine: Optional[List[Dict[str, float]]] = None) -> None:
    """Every trial's placement group (its trainer bundle and, when it may use Ray Data, its
    extraction bundle: :func:`vgray.distributed.descriptors.trial_bundles`) must be placeable on the
    cluster's alive nodes, before anything launches: Tune would only log a warning and wait
    forever. With ``machine`` (:func:`machine_shape`), before a local Ray starts: on this machine."""

    shapes = machine or alive_shapes()
    for bundles in _trial_bundle_sets(spec):
        if placeable(bundles, shapes):
            continue
        parts = "trainer, then Ray Data extraction"
        if len(bundles) > 1 and bundles[0] == GROUP_DRIVER:
            parts = f"the trial's driver, then its {len(bundles) - 1} data-parallel workers' group"
        needs = f"a trial's placement group needs {describe_bundles(bundles)} ({parts})"
        if machine:
            raise BadInput(
                f"resources {spec.resources} do not fit this machine, where vgray starts a local Ray: "
                f"{needs}; the machine has {_shape_text(shapes[0])}; lower resources.cpu/gpu/"
                f"memory_gb/extract_cpu/extract_gpu, or pass --address to run on a cluster"
            )
        raise BadInput(
            f"resources {spec.resources} fit no node of this cluster: {needs}; node shapes: "
            f"{shapes_line(shapes)}; lower resources.cpu/gpu/extract_cpu/extract_gpu or add bigger nodes"
        )


def alive_shapes() -> List[Dict[str, float]]:
    """The totals of the cluster's alive nodes (:func:`node_shape`)."""
    import ray

    return [node_shape(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def concurrent_groups(spec: SweepSpec) -> Optional[int]:
    """For a sweep with data-parallel trials (``train.workers`` > 1): the trials that may run at
    once, as many as the largest trial's group (driver and workers) fits the cluster's alive nodes
    side by side, within ``max_concurrent_trials``. A DDP trial holds only its driver, so Tune alone
    would start every trial at once and leave their groups waiting on each other. None: no DDP trial."""
    sets = [b for b in _trial_bundle_sets(spec) if len(b) > 1 and b[0] == GROUP_DRIVER]
    if not sets:
        return spec.max_concurrent_trials
    most = spec.max_concurrent_trials or max(1, spec.num_trials)
    largest = max(sets, key=lambda b: sum(x.get("CPU", 0) + 100 * x.get("GPU", 0) for x in b))
    return max(1, groups_that_fit(largest, alive_shapes(), most))


def groups_that_fit(bundles: List[Dict[str, float]], shapes: List[Dict[str, float]], most: int) -> int:
    """How many copies of the placement group ``bundles`` fit the nodes of ``shapes`` side by side
    (at most ``most``), each bundle on the first node with room for it, one copy after another: a
    bound on the trials to run at once, found in one pass (the exact :func:`placeable` search over
    every copy's bundles could take long on a large cluster)."""
    free = [dict(s) for s in shapes]
    for n in range(most):
        trial = [dict(f) for f in free]
        for bundle in bundles:
            node = next((f for f in trial if all(f.get(k, 0.0) + 1e-9 >= float(v) for k, v in bundle.items())), None)
            if node is None:
                return n
            for k, v in bundle.items():
                node[k] = node.get(k, 0.0) - float(v)
        free = trial
    return most


def machine_shape(num_cpus: Optional[int] = None) -> Dict[str, float]:
    """The most a local Ray started on this machine can hold (:func:`node_shape`'s keys), known
    before it starts: ``num_cpus`` or the machine's CPUs, the GPUs it sees
    (``CUDA_VISIBLE_DEVICES``, else CUDA's count), the physical memory. Upper bounds of what Ray
    will find (it sets memory aside for its object store), so a refusal here is one Ray would make
    too; the exact check follows once Ray is up."""
    cpus = num_cpus if num_cpus is not None else os.cpu_count() or 1
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip()])  # an upper bound: CUDA stops at an invalid one
    else:
        import torch

        gpus = torch.cuda.device_count()
    try:
        memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound on memory here
        memory = float("inf")
    return {"CPU": float(cpus), "GPU": float(gpus), "memory": memory}


def _trial_bundle_sets(spec: SweepSpec) -> List[List[Dict[str, float]]]:
    """The distinct placement-group bundle lists of the sweep's trials (a search: its base config's)."""
    from vgray.config import load_config
    from vgray.distributed.ddp import worker_bundles, worker_shape
    from vgray.distributed.descriptors import trial_bundles

    configs: List[Optional[Config]] = []
    candidates: Sequence[Optional[Trial]] = spec.trials() or [None]
    for trial in candidates:
        try:
            configs.append(trial.config(spec, trial.seeds[0]) if trial else load_config(base=spec.base))
        except Exception:  # a config that cannot load: the trial itself says why
            configs.append(None)
    out: List[List[Dict[str, float]]] = []
    for cfg in configs:
        bundles = (
            trial_bundles(spec.resources, cfg)
            if cfg is not None
            else trial_bundles({**spec.resources, "extract_cpu": 0, "extract_gpu": 0}, None)
        )
        if cfg is not None and cfg.train.workers > 1:  # the driver's bundle, and Ray Train's group beside it
            bundles = bundles + worker_bundles(worker_shape(spec.resources), cfg.train.workers)
        if bundles not in out:
            out.append(bundles)
    return out


_KEYS = ("CPU", "GPU", "memory")


def node_shape(resources: Dict[str, float]) -> Dict[str, float]:
    """A node's CPUs, GPUs and memory (bytes), from Ray's resource totals of the node."""
    return {k: float(resources.get(k, 0)) for k in _KEYS}


def placeable(bundles: List[Dict[str, float]], shapes: List[Dict[str, float]]) -> bool:
    """Whether ``bundles`` (one placement group, PACK: on as few nodes as possible, several when
    they must) fit the nodes of ``shapes`` (their totals) at once: every bundle on one node, the
    bundles on a node within its resources."""

    def fits(i: int, free: List[Dict[str, float]]) -> bool:
        if i == len(bundles):
            return True
        tried = set()
        for n, node in enumerate(free):
            key = tuple(node[k] for k in _KEYS)
            if key in tried:  # a node of the same free shape as one tried already
                continue
            tried.add(key)
            if all(node.get(k, 0.0) + 1e-9 >= float(v) for k, v in bundles[i].items()):
                rest = {k: node[k] - float(bundles[i].get(k, 0)) for k in _KEYS}
                if fits(i + 1, free[:n] + [rest] + free[n + 1 :]):
                    return True
        return False

    return fits(0, [dict(s) for s in shapes])


def _amount(key: str, value: float) -> str:
    return f"{value / 2**30:g} GiB" if key == "memory" else f"{value:g} {key}"


def describe_bundles(bundles: List[Dict[str, float]]) -> str:
    return " + ".join("{" + ", ".join(_amount(k, v) for k, v in b.items() if v) + "}" for b in bundles)


def _shape_text(shape: Dict[str, float]) -> str:
    """``{4 CPU, 1 GPU, 16 GiB}`` (memory rounded to GiB)."""
    return "{" + ", ".join(f"{shape[k] / 2**30:.0f} GiB" if k == "memory" else f"{shape[k]:g} {k}" for k in _KEYS) + "}"


def shapes_line(shapes: List[Dict[str, float]]) -> str:
    """``2 x {4 CPU, 1 GPU, 16 GiB}, ...``, or ``none``."""
    counts: Dict[str, int] = {}
    for shape in shapes:
        text = _shape_text(shape)
        counts[text] = counts.get(text, 0) + 1
    return ", ".join(f"{n} x {text}" for text, n in counts.items()) or "none"


def planned_rows(spec: SweepSpec) -> int:
    """The rows the sweep writes when it ends: one per config and seed."""
    return spec.num_trials * (spec.repeats if spec.search else 1)


def write_plan(
    spec: SweepSpec, dashboard: Optional[str], finished: bool = False, interrupted: Optional[str] = None
) -> None:
    """``STORAGE/NAME/plan.json`` (:func:`vgray.results.make_plan`, written atomically): how many
    rows the sweep will write (one per config and seed), the keys it varies, whether its driver has
    ended, and the Ray dashboard's URL; ``vgray report`` reads it to say how far a running sweep
    has come (and to show the varied columns while the rows written so far do not differ in them);
    ``interrupted`` (a signal's name) marks a driver that a signal stopped: not finished, resumable.
    With them the set-up the report shows at its top (:func:`_plan_setup`): base config, grid or
    search, seeds, resources per trial, storage and the Ray cluster (address, nodes, CPUs, GPUs)."""
    storage = Storage(spec.directory)
    earlier = storage.read_bytes(PLAN_FILE) if storage.exists(PLAN_FILE) else None
    rows = planned_rows(spec)
    storage.write_bytes(
        PLAN_FILE,
        make_plan(
            spec.name,
            spec.task,
            rows,
            spec.varied,
            spec.keep_models,
            dashboard,
            earlier,
            finished,
            setup=_plan_setup(spec),
            interrupted=interrupted,
        ),
    )


def _plan_setup(spec: SweepSpec) -> Dict[str, Any]:
    """How the sweep is set up, for the top of its report (:data:`vgray.results.SETUP_KEYS`)."""
    import dataclasses

    return {
        "base": spec.base,
        "grid": spec.grid,
        "variants": spec.variants,
        "search": dataclasses.asdict(spec.search) if spec.search else None,
        "scheduler": dataclasses.asdict(spec.scheduler) if spec.scheduler else None,
        "seeds": list(range(spec.repeats)),
        "resources": spec.resources,
        "storage": spec.directory,
        "cluster": _cluster_info(),
    }


def _cluster_info() -> Optional[Dict[str, Any]]:
    """The Ray cluster this driver is connected to: its GCS address, live nodes, CPUs and GPUs;
    None when Ray is not up (the plan then keeps what an earlier write recorded)."""
    import ray

    if not ray.is_initialized():
        return None
    total = ray.cluster_resources()
    return {
        "address": ray.get_runtime_context().gcs_address,
        "nodes": sum(bool(n.get("Alive")) for n in ray.nodes()),
        "cpus": total.get("CPU", 0),
        "gpus": total.get("GPU", 0),
    }


# -- Tune ------------------------------------------------------------------------------------------


def _tuner(spec: SweepSpec, trainable, stage: Optional[List[Trial]], number: int, resume: bool, out):
    """The Tune experiment of stage ``number``: the first is ``STORAGE/NAME``, a second one (trials
    that start from first-stage models) ``STORAGE/NAME/stage2``. Restored when resuming and there."""
    from ray import tune

    storage_path, name = (spec.storage_path, spec.name) if number == 0 else (spec.directory, f"stage{number + 1}")
    folder = f"{storage_path.rstrip('/')}/{name}"
    if resume and Storage(folder).exists("tuner.pkl"):
        from vgray.distributed.storage_watch import repair_tune_state

        for state in repair_tune_state(folder):  # cut short by a full disk
            out(f"sweep {spec.name}: {state} was cut short; put back its last whole copy")
        return tune.Tuner.restore(folder, trainable, resume_unfinished=True, resume_errored=True)
    return _new_tuner(spec, trainable, stage, storage_path, name)


# Tune's checkpoints kept per trial. A trial reports a checkpoint each epoch and one at its end.
# With num_to_keep=N, Tune forces a snapshot of the experiment state (and a sync to the storage)
# each time a trial has checkpointed N times since the last one, so that the state never names a
# checkpoint already deleted; it otherwise snapshots on its own period (10 s at least). N=1 forced
# one per checkpoint, seconds apart across trials (Tune's "snapshotting has been triggered multiple
# times" warning). With 3, only a trial that checkpoints 3 times within one period forces one.
# Once the sweep's state holds a finished trial as finished, its earlier checkpoints are deleted
# (:func:`_prune_checkpoints`): at rest each trial keeps its last one, as with N=1.
CHECKPOINTS_KEPT = 3


def _new_tuner(spec: SweepSpec, trainable, stage: Optional[List[Trial]], storage_path: str, name: str):
    from ray import tune

    from vgray.distributed.live import LiveTable
    from vgray.distributed.storage_watch import StorageWatch

    searching = spec.search is not None and spec.scheduler is None  # else the scheduler takes them
    return tune.Tuner(
        trainable,
        param_space=param_space(spec, stage, tune.grid_search, _domain),
        tune_config=tune.TuneConfig(
            num_samples=spec.search.num_samples if spec.search else 1,
            search_alg=_searcher(spec),
            scheduler=_scheduler(spec),
            metric=spec.search.metric if searching and spec.search is not None else None,
            mode=spec.search.mode if searching and spec.search is not None else None,
            max_concurrent_trials=concurrent_groups(spec),
            reuse_actors=True,  # a worker that imported torch and vgray serves the next trial too
            trial_name_creator=_name_of,
            trial_dirname_creator=_dirname_of,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[LiveTable.for_sweep(spec), StorageWatch(spec.directory), *tracker_callbacks(spec)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            verbose=0,
        ),  # the console is the LiveTable's (vgray.distributed.live)
    )


def _domain(dim: Dimension):
    """Tune's sampler for one search dimension."""
    from ray import tune

    if dim.type == "categorical":
        assert dim.choices is not None  # a categorical dimension has choices (spec._dimension)
        return tune.choice(dim.choices)
    assert dim.low is not None and dim.high is not None  # a range has both ends (spec._dimension)
    if dim.type == "float":
        return (tune.loguniform if dim.log else tune.uniform)(dim.low, dim.high)
    return (tune.lograndint if dim.log else tune.randint)(int(dim.low), int(dim.high) + 1)


def _name_of(trial) -> str:
    params = decode_trial(trial.config)
    return params.name or f"{params.label}-{trial.trial_id[-5:]}"


def _dirname_of(trial) -> str:
    """The trial's folder: its name and Tune's trial id (so a failed trial's id can be read back)."""
    return f"{_name_of(trial)}_{trial.trial_id}"


def _scheduler(spec: SweepSpec):
    if not spec.scheduler or spec.scheduler.type == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=s.metric,
        mode=s.mode,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        # one report an epoch, plus the final one with the test figures
        max_t=s.max_t or _max_epochs(spec) + 1,
    )


def _max_epochs(spec: SweepSpec) -> int:
    from vgray.config import load_config

    return max(
        (t.config(spec, 0).train.epochs for t in spec.trials()), default=load_config(base=spec.base).train.epochs
    )


def _searcher(spec: SweepSpec):
    if not spec.search:
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    s = spec.search
    sampler = (
        optuna.samplers.RandomSampler(seed=s.seed) if s.sampler == "random" else optuna.samplers.TPESampler(seed=s.seed)
    )
    return OptunaSearch(metric=s.metric, mode=s.mode, sampler=sampler)


def _rows_for_unfinished(grid, actor) -> int:
    """Trials that ended without their rows get one: ``failed`` (after their retries) with the
    first line of the error, ``stopped`` (by ASHA) with their last validation metrics.
    Returns the number of failed trials."""
    import ray

    from vgray.distributed.live import error_line

    failed = 0
    for result in grid:
        metrics = result.metrics or {}
        if result.error is None and metrics.get("vgray_finished"):
            continue
        trial = decode_trial(result.config or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name.rsplit("_", 1)[-1]
        if result.error is not None:
            failed += 1
            error = error_line(str(result.error)) or type(result.error).__name__
            status, values = "failed", {}
        else:
            status, error, values = "stopped", "", {k: v for k, v in metrics.items() if k.startswith("val/")}
        for seed in trial.seeds:
            row_id = trial_id if len(trial.seeds) == 1 else f"{trial_id}-s{seed}"
            row = make_row(trial.config(seed), row_id, trial.name or trial_id, values, status=status, error=error[:300])
            ray.get(actor.add.remote(row))
    return failed
