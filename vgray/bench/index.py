"""``vgray bench index``: how fast vgray indexes a folder of a million images, and in how much memory,
against a plain walk-and-parse loop measured in the same run.

It writes a tree of N empty files named in the VG format, spread over subfolders of
``--per-dir`` files (as a downloader's database folder would be; empty files cost inodes only, and
the index reads names, never pixels), then runs three measurements, each in a fresh Python process
so that every peak memory figure is its own (``ru_maxrss`` of the child):

- ``baseline``: ``os.walk``, sort, then ``name.split("@")`` and ``float`` per file into Python lists
  (what vgray's indexer did before, and what most VG code does);
- ``vgray_cold``: :func:`vgray.data.dataset.index_images` with an empty cache (walk, bulk parse,
  parquet written);
- ``vgray_cached``: the same call again, reading the cached index.

Each prints files/s and peak RSS (and the rise over the process's RSS after its imports); the ratios
are vgray cold against the baseline.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vgray.console import Parser
from vgray.errors import BadInput
from vgray.values import count

KINDS = ("baseline", "vgray_cold", "vgray_cached")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def generate(top: Path, n: int, per_dir: int) -> None:
    """``n`` empty files with VG names (east, north, zone, band, lat, lon, pano, tile, heading, ...)
    in ``top/NNNNN/`` folders of ``per_dir`` files."""
    for start in range(0, n, per_dir):
        folder = top / f"{start // per_dir:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, min(start + per_dir, n)):
            east, north = 543000.0 + (i % 3000) * 1.37, 4176000.0 + (i // 3000) * 2.11
            name = (
                f"@{east:.2f}@{north:.2f}@10@S@37.{i:07d}@-122.{i:07d}@pano{i:08d}@{i % 12:02d}"
                f"@{(i * 30) % 360}@0@@@2013{i % 12 + 1:02d}@@.jpg"
            )
            os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o644))


def _baseline(top: str) -> int:
    files = []
    for d, _, names in os.walk(top):
        for name in names:
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                files.append(os.path.join(d, name))
    files.sort()
    east, north, heading = [], [], []
    for path in files:
        fields = os.path.basename(path).split("@")
        east.append(float(fields[1]))
        north.append(float(fields[2]))
        heading.append(float(fields[9]) if len(fields) > 9 and fields[9] else float("nan"))
    return len(files)


def child(kind: str, top: str) -> dict:
    """One measurement, in this (fresh) process: files seen, seconds, peak RSS and its rise."""
    if kind != "baseline":
        import numpy  # noqa: F401  (imports before the 'after imports' RSS, as the baseline's are)
        import pyarrow  # noqa: F401

        from vgray.data.dataset import index_images
    before = _rss_mb()
    start = time.perf_counter()
    n = _baseline(top) if kind == "baseline" else len(index_images(Path(top)))
    seconds = time.perf_counter() - start
    peak = _rss_mb()
    return {"files": n, "seconds": seconds, "peak_rss_mb": peak, "rss_rise_mb": peak - before}


def _run_child(kind: str, top: Path, cache: Path) -> dict:
    env = dict(os.environ, VGRAY_CACHE=str(cache))
    out = subprocess.run(
        [sys.executable, "-m", "vgray.bench.index", "--child", kind, str(top)], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"vgray bench index: the {kind} run failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parser() -> Parser:
    """``vgray bench index``'s options (read by :func:`main`)."""
    from vgray.bench import bench_parser
    from vgray.paths import path_type

    p = bench_parser("index", "1,000,000 files in folders of 1,000")
    p.add_argument("--files", type=count(), default=1_000_000, help="files in the generated tree (default 1000000)")
    p.add_argument("--per-dir", type=count(), default=1000, help="files per subfolder (default 1000)")
    p.add_argument(
        "--dir",
        type=path_type("--dir", "out_dir"),
        help="where to generate the tree (default: a temporary folder, removed afterwards; "
        "a given folder is kept, and reused when it already holds --files files)",
    )
    return p


def main(argv) -> None:
    """``vgray bench index``: files/s and peak memory of vgray's indexer (cold and cached) against a
    plain walk-and-parse loop, on a generated tree of ``--files`` empty VG-named files."""
    from vgray.bench import print_figures

    args = parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vgray-bench-index-"))
    top = Path(args.dir).expanduser() / "database" if args.dir else work / "database"
    try:
        start = time.perf_counter()
        reuse = top.is_dir() and sum(len(f) for _, _, f in os.walk(top)) == args.files
        if not reuse:
            if top.exists():
                raise BadInput(
                    f"--dir {args.dir}: {top} exists and does not hold {args.files} files; give an empty or new folder"
                )
            generate(top, args.files, args.per_dir)
        generate_s = time.perf_counter() - start
        cache = work / "cache"
        runs = {kind: _run_child(kind, top, cache) for kind in KINDS}  # cached runs after cold: same cache
        for kind, r in runs.items():
            if r["files"] != args.files:
                raise RuntimeError(f"vgray bench index: the {kind} run saw {r['files']} files, not {args.files}")
        figures = {
            "files": args.files,
            "folders": -(-args.files // args.per_dir),
            "generate_s": generate_s,
            "tree_reused": reuse,
        }
        for kind, r in runs.items():
            figures[f"{kind}_s"] = r["seconds"]
            figures[f"{kind}_files_per_s"] = r["files"] / max(r["seconds"], 1e-9)
            figures[f"{kind}_peak_rss_mb"] = r["peak_rss_mb"]
            figures[f"{kind}_rss_rise_mb"] = r["rss_rise_mb"]
        base, cold, cached = (runs[k] for k in KINDS)
        figures["cached_speedup_vs_baseline"] = base["seconds"] / max(cached["seconds"], 1e-9)
        figures["memory_ratio"] = cold["peak_rss_mb"] / base["peak_rss_mb"]  # vgray cold / baseline peak RSS
        figures["ratio"] = base["seconds"] / max(cold["seconds"], 1e-9)  # how many times faster vgray cold is
        print_figures(figures, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
    else:
        sys.exit("usage: python -m vgray.bench.index --child KIND TOP (vgray bench index runs it)")
