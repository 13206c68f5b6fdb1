"""Writing a synthetic dataset: VG file names, rendering in batches (over all cores for the larger
presets), the atomic move into place, the per-(preset, seed) copy in vgray's cache, the free-space
check, and the resumable write that :mod:`vgray.distributed.synth` runs as Ray tasks."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vgray.atomic import atomic_path, write_text
from vgray.console import progress_bar
from vgray.data.synthetic.capture import CAM_FIELDS, capture_plan, image_count
from vgray.data.synthetic.geo import UTM_BAND, UTM_ZONE, utm_to_latlon
from vgray.data.synthetic.presets import GENERATION_FIELDS, PRESETS, SPLITS, Preset
from vgray.data.synthetic.render import render
from vgray.data.synthetic.world import World, build_world
from vgray.errors import BadInput
from vgray.paths import cache_dir

#: Bumped whenever the rendered bytes change, so cached datasets of an older look are not reused.
VERSION = 1
#: Written last into a finished dataset; its presence means "complete".
MARKER = "vgray_synthetic.json"

KINDS = ("database", "queries")
JPEG_QUALITY = 90
BATCH = 32  # images rendered together (amortises numpy's per-call overhead)
CHUNK = 512  # images per multiprocessing task (and per Ray task)
#: Folder of a resumable generation's bookkeeping inside the dataset: ``started.json`` (which
#: preset and seed it is writing) and one ``<split>-<kind>-<start>-<stop>.done`` per finished chunk.
#: Removed once :data:`MARKER` is written.
PROGRESS = ".vgray_synthetic_progress"
STARTED = "started.json"
DISK_SLACK = 1.10  # the free-space estimate: measured mean JPEG size times this, in whole blocks ...
DISK_MARGIN = 16 << 20  # ... plus this, for folders, the marker and the file index

_CACHE: dict = {}  # per process: (preset, seed, split) -> (world, {kind: plan})


def _world_and_plans(preset: Preset, seed: int, split_index: int):
    key = (preset, seed, split_index)
    if key not in _CACHE:
        _CACHE.clear()  # one neighbourhood at a time: the large one is big
        world = build_world(preset, seed, split_index)
        _CACHE[key] = world, {k: capture_plan(world, preset, seed, k) for k in KINDS}
    return _CACHE[key]


def clear_cache() -> None:
    """Forget the neighbourhood this process keeps for :func:`render_range`, so that the next
    call builds it afresh."""
    _CACHE.clear()


def file_name(world: World, split: str, kind: str, i: int, plan: dict) -> str:
    """VG file name of image ``i``: @east@north@zone@band@lat@lon@pano@tile@heading@...@note@.jpg"""
    east = world.east0 + float(plan["x"][i])
    north = world.north0 + float(plan["y"][i])
    lat, lon = utm_to_latlon(east, north)
    if kind == "database":
        pano = f"synth{split}p{int(plan['place'][i]):06d}"
    else:
        pano = f"synth{split}q{i:06d}"
    heading = int(round(float(plan["heading"][i]))) % 360
    return (
        f"@{east:.2f}@{north:.2f}@{UTM_ZONE}@{UTM_BAND}@{lat:.6f}@{lon:.6f}@{pano}@@{heading}"
        f"@@@@@{plan['note'][i]}@.jpg"
    )


def _rendered(job: tuple):
    """Yield ``(path, image)`` for every image of ``job`` (see :func:`render_range`), rendered
    :data:`BATCH` at a time from ``job``'s start: the batches, and so the bytes, are the same
    whichever path writes them."""
    preset_name, seed, split_index, kind, start, stop, root = job
    preset = PRESETS[preset_name]
    world, plans = _world_and_plans(preset, seed, split_index)
    plan = plans[kind]
    split = SPLITS[split_index]
    folder = Path(root) / "images" / split / kind
    k_kind = KINDS.index(kind)
    for a in range(start, stop, BATCH):
        idx = np.arange(a, min(a + BATCH, stop))
        cams = {f: np.asarray(plan[f])[idx] for f in CAM_FIELDS}
        seeds = [[seed, split_index, k_kind, int(i), 0x5E5] for i in idx]
        imgs = render(world, cams, preset.height, preset.width, seeds)
        for i, im in zip(idx, imgs):
            yield folder / file_name(world, split, kind, int(i), plan), im


def render_range(job: tuple) -> int:
    """Render and write images ``start:stop`` of one split's database or queries (a pool task).

    ``job`` is ``(preset_name, seed, split_index, kind, start, stop, root)``; returns the count.
    """
    from PIL import Image

    for path, im in _rendered(job):
        Image.fromarray(im).save(path, "JPEG", quality=JPEG_QUALITY)
    return job[5] - job[4]


def chunk_name(job: tuple) -> str:
    """The done-marker of a :func:`render_chunk` job, in the dataset's :data:`PROGRESS` folder."""
    _, _, split_index, kind, start, stop, _ = job
    return f"{SPLITS[split_index]}-{kind}-{start:09d}-{stop:09d}.done"


def render_chunk(job: tuple) -> int:
    """:func:`render_range` for a resumable generation (a Ray task of
    :mod:`vgray.distributed.synth`): each image is written under a temporary name beside its own
    and moved into place (:mod:`vgray.atomic`), so a visible file is always complete; once every
    image is on disk, the chunk's done-marker (:func:`chunk_name`) is written. A chunk without its
    marker is rendered again whole, so what a killed run left behind is replaced. Returns the
    count."""
    from PIL import Image

    written = []
    for path, im in _rendered(job):
        with atomic_path(path, sync=False) as tmp:  # synced below, all at once
            Image.fromarray(im).save(tmp, "JPEG", quality=JPEG_QUALITY)
        written.append(path)
    _sync(written)
    write_text(Path(job[6]) / PROGRESS / chunk_name(job), f"{job[5] - job[4]}\n")
    return job[5] - job[4]


def _sync(paths: list[Path]) -> None:
    """Make the files ``paths`` and their folders durable before a done-marker vouches for them."""
    for folder in {p.parent for p in paths}:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:  # a folder some file systems cannot sync: the files' own syncs stand
            pass
        finally:
            os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_preset(preset: str, seed) -> int:
    """Validate a preset name and seed (:class:`~vgray.errors.BadInput` otherwise); returns the
    seed as an int."""
    if preset not in PRESETS:
        raise BadInput(f"unknown synthetic preset {preset!r}; allowed: {', '.join(PRESETS)}")
    try:
        seed_int = int(seed)
    except (TypeError, ValueError):
        seed_int = -1
    if seed_int < 0 or seed_int != seed:
        raise BadInput(f"synthetic seed must be a non-negative integer, got {seed!r}")
    return seed_int


def _read_marker(out: Path, name: str = MARKER) -> dict | None:
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def _matches(marker: dict | None, preset: str, seed: int) -> bool:
    if not marker:
        return False
    return marker.get("preset") == preset and marker.get("seed") == seed and marker.get("version") == VERSION


def _marker(p: Preset, seed: int, counts: dict, t0: float) -> str:
    """The text of :data:`MARKER`: what the dataset holds (the look, not how it was written)."""
    params = {k: v for k, v in dataclasses.asdict(p).items() if k not in GENERATION_FIELDS}
    marker = dict(
        format="vgray-synthetic",
        preset=p.name,
        seed=seed,
        version=VERSION,
        image_size=[p.height, p.width],
        utm_zone=f"{UTM_ZONE}{UTM_BAND}",
        counts=counts,
        preset_params=params,
        build_seconds=round(time.time() - t0, 2),
    )
    return json.dumps(marker, indent=1)


def generate(out, preset: str = "tiny", seed: int = 0, progress: bool = False) -> Path:
    """Write the synthetic dataset ``preset`` (a :data:`PRESETS` key) for ``seed`` into ``out``.

    The dataset is rendered into a temporary sibling folder, :data:`MARKER` is written last, and
    the folder is moved into place with one ``os.replace``, so ``out`` is either absent/empty or
    complete. If ``out`` already holds this preset/seed/version, returns at once. Raises
    :class:`~vgray.errors.BadInput` if ``out`` holds anything else, or when the dataset's
    estimated size exceeds the free space (:func:`check_disk`). Returns ``out`` as a Path.
    """
    seed = check_preset(preset, seed)
    out = Path(out).expanduser().absolute()
    state = _state(out, preset, seed)
    if state == "finished":
        return out
    if state == "partial":
        raise BadInput(
            f"{out} holds an unfinished resumable generation of synthetic preset {preset!r} seed {seed}; "
            f"finish it with the command that started it (vgray synth with --address, or a Ray preset)"
        )
    p = PRESETS[preset]
    counts = image_counts(p, seed)
    check_disk(out, p, sum(sum(c.values()) for c in counts.values()))
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        jobs = _plan_jobs(preset, seed, tmp, counts)
        shown = _render_jobs(p, preset, jobs, progress)
        _CACHE.clear()
        (tmp / MARKER).write_text(_marker(p, seed, counts, t0))
        try:
            os.replace(tmp, out)  # atomic; only succeeds onto a missing or empty folder
        except OSError:
            # Someone else finished first (same folder, not through ensure's lock).
            if _matches(_read_marker(out), preset, seed):
                return out
            raise
        if shown:  # the bar is erased when done: say what it did
            print(f"synthetic {preset}: wrote {out} in {time.time() - t0:.1f} s", file=sys.stderr)
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _state(out: Path, preset: str, seed: int) -> str:
    """What ``out`` holds: ``"finished"`` (this preset/seed/version), ``"partial"`` (a resumable
    generation of it, unfinished), ``"new"`` (missing or an empty folder);
    :class:`~vgray.errors.BadInput` when it holds anything else."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise BadInput(f"synthetic dataset folder {out} exists and is not a folder")
    marker = _read_marker(out)
    if _matches(marker, preset, seed):
        return "finished"
    if marker is not None:
        raise BadInput(
            f"{out} holds synthetic preset {marker.get('preset')!r} seed "
            f"{marker.get('seed')} version {marker.get('version')}, not {preset!r} "
            f"seed {seed} version {VERSION}; use another folder"
        )
    started = _read_marker(out / PROGRESS, STARTED)
    if _matches(started, preset, seed):
        return "partial"
    if started is not None:
        raise BadInput(
            f"{out} holds an unfinished generation of synthetic preset {started.get('preset')!r} seed "
            f"{started.get('seed')} version {started.get('version')}, not {preset!r} seed {seed} "
            f"version {VERSION}; resume that one or use another folder"
        )
    if any(e.name != PROGRESS for e in out.iterdir()):  # (a run killed before its started.json)
        raise BadInput(f"{out} is not empty and is not a vgray synthetic dataset; pass a new or empty folder")
    return "new"


def image_counts(p: Preset, seed: int) -> dict[str, dict[str, int]]:
    """Images per split and kind of preset ``p`` for ``seed``, without building its worlds."""
    return {split: {kind: image_count(p, seed, si, kind) for kind in KINDS} for si, split in enumerate(SPLITS)}


def jpeg_size(p: Preset) -> int:
    """Mean bytes of one of ``p``'s JPEGs: the preset's measured figure, else an estimate from the
    pixel count (the measured presets lie between 0.3 and 0.45 bytes a pixel, plus the headers)."""
    return p.jpeg_bytes or int(700 + 0.45 * p.height * p.width)


def check_disk(out: Path, p: Preset, images: int) -> None:
    """Refuse (:class:`~vgray.errors.BadInput`, before anything is written) to write ``images``
    JPEGs of preset ``p`` under ``out`` when their estimated size, :func:`jpeg_size` times
    :data:`DISK_SLACK` rounded up to the file system's blocks per file plus :data:`DISK_MARGIN`,
    exceeds the free space of ``out``'s file system, or the files exceed its free inodes."""
    where = out
    while not where.exists() and where != where.parent:
        where = where.parent
    st = os.statvfs(where)
    block = st.f_frsize or 4096
    per_file = math.ceil(jpeg_size(p) * DISK_SLACK / block) * block
    need = images * per_file + DISK_MARGIN
    free = shutil.disk_usage(where).free
    if need > free:
        raise BadInput(
            f"synthetic {p.name}: {images:,} images need about {_size(need)} ({per_file:,} bytes each on disk) "
            f"but {where} has {_size(free)} free; free some space or choose another folder"
        )
    if st.f_files and images + 1000 > st.f_favail:  # f_files 0: a file system without an inode count
        raise BadInput(
            f"synthetic {p.name}: {images:,} images need as many files but {where} has {st.f_favail:,} "
            f"free inodes; choose another file system"
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _plan_jobs(preset: str, seed: int, root: Path, counts: dict) -> list:
    """The :func:`render_range` jobs that write ``counts`` (:func:`image_counts`) into ``root``,
    whose image folders it creates (if missing), :data:`CHUNK` images each."""
    jobs: list[tuple[str, int, int, str, int, int, str]] = []
    for si, split in enumerate(SPLITS):
        for kind in KINDS:
            n = counts[split][kind]
            (root / "images" / split / kind).mkdir(parents=True, exist_ok=True)
            jobs += [(preset, seed, si, kind, a, min(a + CHUNK, n), str(root)) for a in range(0, n, CHUNK)]
    return jobs


def _render_jobs(p: Preset, preset: str, jobs: list, progress: bool) -> bool:
    """Run the jobs, on every core when the preset asks for processes; each image draws from its
    own random stream, so the bytes do not depend on how the jobs are shared out. With
    ``progress``, a bar over the images written (:func:`vgray.console.progress_bar`); returns
    whether it was shown."""
    total = sum(j[5] - j[4] for j in jobs)
    with progress_bar(total, f"synthetic {preset}", "img", progress) as bar:
        if p.processes and (os.cpu_count() or 1) > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(os.cpu_count()) as pool:
                for n in pool.imap_unordered(render_range, jobs):
                    bar.update(n)
        else:
            for job in jobs:
                bar.update(render_range(job))
        return not bar.disable


# -- the resumable write ---------------------------------------------------------------------


@dataclass
class Resumable:
    """A resumable generation, planned and checked (:func:`plan_resumable`), nothing written yet:
    ``jobs`` are the :func:`render_chunk` jobs still to run, ``done`` the images of the chunks a
    previous run finished, ``started`` whether there was one."""

    out: Path
    preset: Preset
    seed: int
    counts: dict
    jobs: list
    done: int
    started: bool

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def plan_resumable(out, preset: str = "tiny", seed: int = 0) -> Resumable | None:
    """Plan writing ``preset``/``seed`` into ``out`` chunk by chunk, resuming what a previous run
    there left (its finished chunks are skipped). Every check runs here, before anything is
    written: the preset and seed, what ``out`` holds (:class:`~vgray.errors.BadInput` as for
    :func:`generate`), the free space for the chunks still to write (:func:`check_disk`).
    Returns None when ``out`` already holds the finished dataset."""
    seed = check_preset(preset, seed)
    out = Path(out).expanduser().absolute()
    state = _state(out, preset, seed)
    if state == "finished":
        shutil.rmtree(out / PROGRESS, ignore_errors=True)  # left by a run killed after its marker
        return None
    p = PRESETS[preset]
    counts = image_counts(p, seed)
    jobs: list[tuple[str, int, int, str, int, int, str]] = []
    for si, split in enumerate(SPLITS):
        for kind in KINDS:
            n = counts[split][kind]
            jobs += [(preset, seed, si, kind, a, min(a + CHUNK, n), str(out)) for a in range(0, n, CHUNK)]
    finished = set(os.listdir(out / PROGRESS)) if state == "partial" else set()
    todo = [j for j in jobs if chunk_name(j) not in finished]
    done = sum(j[5] - j[4] for j in jobs) - sum(j[5] - j[4] for j in todo)
    check_disk(out, p, sum(j[5] - j[4] for j in todo))
    return Resumable(out, p, seed, counts, todo, done, state == "partial")


def write_resumable(plan: Resumable, run_jobs: Callable[[list, Callable[[int], object]], None], progress=False) -> Path:
    """Write a :func:`plan_resumable` plan: the image folders and ``started.json`` first, then (on
    a resumed run) the temporary files a killed run left are removed, then ``run_jobs(jobs,
    update)`` runs every :func:`render_chunk` job and calls ``update(images)`` as each ends (the
    progress bar, over images written), then, once every chunk's done-marker is there,
    :data:`MARKER` is written, last, and the bookkeeping removed. Returns the dataset folder."""
    out, p, t0 = plan.out, plan.preset, time.time()
    (out / PROGRESS).mkdir(parents=True, exist_ok=True)
    if plan.started:
        _remove_temporaries(out)
    else:  # first, so that whatever follows is known to be this generation's
        write_text(out / PROGRESS / STARTED, json.dumps(dict(preset=p.name, seed=plan.seed, version=VERSION)))
    for split in SPLITS:
        for kind in KINDS:
            (out / "images" / split / kind).mkdir(parents=True, exist_ok=True)
    with progress_bar(plan.total, f"synthetic {p.name}", "img", progress) as bar:
        bar.update(plan.done)
        run_jobs(plan.jobs, bar.update)
        shown = not bar.disable
    finished = set(os.listdir(out / PROGRESS))
    missing = [j for j in plan.jobs if chunk_name(j) not in finished]
    if missing:
        raise RuntimeError(
            f"synthetic {p.name}: {len(missing)} chunks were not written (first: {chunk_name(missing[0])})"
        )
    write_text(out / MARKER, _marker(p, plan.seed, plan.counts, t0))
    shutil.rmtree(out / PROGRESS, ignore_errors=True)
    if shown:
        print(f"synthetic {p.name}: wrote {out} in {time.time() - t0:.1f} s", file=sys.stderr)
    return out


def _remove_temporaries(out: Path) -> None:
    """Remove the temporary files (``.NAME.PID.tmp``, :func:`vgray.atomic.temp_name`) a killed
    run left in the dataset: nothing is writing them now."""
    folders = [out, out / PROGRESS] + [out / "images" / s / k for s in SPLITS for k in KINDS]
    for folder in folders:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file():
                    os.unlink(e.path)


def ensure(preset: str, seed: int = 0, progress: bool = True) -> Path:
    """The synthetic dataset ``preset``/``seed`` in vgray's cache, generated on first use, with a
    bar while it renders (on by default: every command's first ``synthetic:<preset>`` comes here;
    the bar's rule, :func:`vgray.console.progress_bar`, keeps it off a stderr that is not a
    terminal, as in sweep trials, whose stderr Ray writes to log files).

    Lives in ``cache_dir()/synthetic/<preset>-s<seed>-v<VERSION>``. Concurrent callers
    (processes, or threads each opening the lock) serialise on an ``flock``-ed lock file, so it is
    rendered once; temporary folders left by a killed run are removed.
    """
    seed = check_preset(preset, seed)
    root = cache_dir() / "synthetic"
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"{preset}-s{seed}-v{VERSION}"
    if _matches(_read_marker(out), preset, seed):
        return out
    with open(root / f"{out.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Under the lock nobody else renders this dataset: temporary folders of it are
            # leftovers of a killed run.
            for stale in root.glob(f".{out.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            return generate(out, preset, seed, progress=progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
