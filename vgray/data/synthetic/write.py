"""Writing a synthetic dataset: VG file names, rendering in batches (over all cores for the larger
presets), the atomic move into place, and the per-(preset, seed) copy in vgray's cache."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vgray.console import progress_bar
from vgray.data.synthetic.capture import CAM_FIELDS, capture_plan
from vgray.data.synthetic.geo import UTM_BAND, UTM_ZONE, utm_to_latlon
from vgray.data.synthetic.presets import PRESETS, SPLITS, Preset
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
CHUNK = 512  # images per multiprocessing task

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


def render_range(job: tuple) -> int:
    """Render and write images ``start:stop`` of one split's database or queries (a pool task).

    ``job`` is ``(preset_name, seed, split_index, kind, start, stop, root)``; returns the count.
    """
    preset_name, seed, split_index, kind, start, stop, root = job
    from PIL import Image

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
            Image.fromarray(im).save(folder / file_name(world, split, kind, int(i), plan), "JPEG", quality=JPEG_QUALITY)
    return stop - start


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


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _matches(marker: dict | None, preset: str, seed: int) -> bool:
    if not marker:
        return False
    return marker.get("preset") == preset and marker.get("seed") == seed and marker.get("version") == VERSION


def generate(out, preset: str = "tiny", seed: int = 0, progress: bool = False) -> Path:
    """Write the synthetic dataset ``preset`` (a :data:`PRESETS` key) for ``seed`` into ``out``.

    The dataset is rendered into a temporary sibling folder, :data:`MARKER` is written last, and
    the folder is moved into place with one ``os.replace``, so ``out`` is either absent/empty or
    complete. If ``out`` already holds this preset/seed/version, returns at once. Raises
    :class:`~vgray.errors.BadInput` if ``out`` holds anything else. Returns ``out`` as a Path.
    """
    seed = check_preset(preset, seed)
    out = Path(out).expanduser().absolute()
    if _finished(out, preset, seed):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    p = PRESETS[preset]
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        counts, jobs = _plan_jobs(p, preset, seed, tmp)
        shown = _render_jobs(p, preset, jobs, progress)
        _CACHE.clear()
        marker = dict(
            format="vgray-synthetic",
            preset=preset,
            seed=seed,
            version=VERSION,
            image_size=[p.height, p.width],
            utm_zone=f"{UTM_ZONE}{UTM_BAND}",
            counts=counts,
            preset_params=dataclasses.asdict(p),
            build_seconds=round(time.time() - t0, 2),
        )
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
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


def _finished(out: Path, preset: str, seed: int) -> bool:
    """True when ``out`` already holds this preset/seed/version; False when it is missing or an
    empty folder; :class:`~vgray.errors.BadInput` when it holds anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise BadInput(f"synthetic dataset folder {out} exists and is not a folder")
    marker = _read_marker(out)
    if _matches(marker, preset, seed):
        return True
    if marker is not None:
        raise BadInput(
            f"{out} holds synthetic preset {marker.get('preset')!r} seed "
            f"{marker.get('seed')} version {marker.get('version')}, not {preset!r} "
            f"seed {seed} version {VERSION}; use another folder"
        )
    if any(out.iterdir()):
        raise BadInput(f"{out} is not empty and is not a vgray synthetic dataset; pass a new or empty folder")
    return False


def _plan_jobs(p: Preset, preset: str, seed: int, tmp: Path) -> tuple[dict, list]:
    """Image counts per split and kind, and the :func:`render_range` jobs that write them into
    ``tmp`` (whose image folders it creates)."""
    counts: dict[str, dict[str, int]] = {}
    jobs: list[tuple[str, int, int, str, int, int, str]] = []
    for si, split in enumerate(SPLITS):
        world = build_world(p, seed, si)
        counts[split] = {}
        for kind in KINDS:
            n = len(capture_plan(world, p, seed, kind)["x"])
            counts[split][kind] = n
            (tmp / "images" / split / kind).mkdir(parents=True)
            jobs += [(preset, seed, si, kind, a, min(a + CHUNK, n), str(tmp)) for a in range(0, n, CHUNK)]
    return counts, jobs


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
