#!/usr/bin/env python
"""The resolution study (the paper's Fig. 3) measured in both resize orders with the same weights.

Trains one network once at the world's native size (``vgray train``), then scores its best
checkpoint (``vgray eval``) on the test split at every ``data.resize_fraction`` with
``data.resize_order=paper`` (normalise, then resize the tensor with antialiasing: the paper's
code) and ``=pil`` (resize the PIL image, then normalise), and prints one README table::

    nice -n 10 .venv/bin/python scripts/resize_order_study.py --out runs/resize-order

The defaults are the README's: synthetic ``small`` (native 180x240), ResNet-18 conv4 + GeM from
random weights, Adam at 1e-3, 1 epoch of 100 queries of partial mining (one cache refresh, 4
negatives, a sample of 300), fractions 1.0, 0.8, 0.6, 0.4; every ``--set`` overrides
the training config (and so the evaluations). A run folder that already holds ``train/best.pt`` is
scored again without training (``--retrain`` trains anew). Each evaluation's figures are kept as
``OUT/eval-<order>-<fraction>.json`` and the table as ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULTS = [
    "data.root=synthetic:small",
    "data.resize=[180,240]",
    "model.pretrained=none",
    "model.backbone=resnet18conv4",
    "model.aggregation=gem",
    "train.mining=partial",
    "train.lr=0.001",
    "train.queries_per_epoch=100",
    "train.cache_refresh_rate=100",
    "train.negs_num_per_query=4",
    "train.neg_samples_num=300",
    "train.epochs=1",
    "train.patience=100",
]
ORDERS = ("paper", "pil")


def _fractions(text: str) -> list:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give fractions in (0, 1] separated by commas, e.g. 1.0,0.8")
    return values


def _cli(argv) -> None:
    """``vgray ARGV`` in this process; a non-zero exit stops the study with its status."""
    from vgray.cli import main as vgray

    status = vgray([str(a) for a in argv])
    if status:
        raise SystemExit(status)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="study folder (the training run goes to OUT/train)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument(
        "--fractions",
        type=_fractions,
        default=[1.0, 0.8, 0.6, 0.4],
        help="data.resize_fraction values, comma-separated (default 1.0,0.8,0.6,0.4)",
    )
    parser.add_argument("--retrain", action="store_true", help="train again even if OUT/train/best.pt exists")
    args = parser.parse_args(argv)

    out = Path(args.out)
    run = out / "train"
    best = run / "best.pt"
    sets = sum((["--set", s] for s in [*DEFAULTS, *args.set]), [])
    train_s = None
    if args.retrain or not best.is_file():
        start = time.perf_counter()
        _cli(["train", *sets, "--out", run, "--json", out / "train.json"])
        train_s = time.perf_counter() - start

    from vgray.config import load_config

    cfg = load_config(run / "config.yaml")
    rows = {}
    for fraction in args.fractions:
        for order in ORDERS:
            figures = out / f"eval-{order}-{fraction:g}.json"
            start = time.perf_counter()
            _cli(
                [
                    "eval",
                    "--config",
                    run / "config.yaml",
                    "--set",
                    f"model.pretrained={best}",
                    "--set",
                    f"data.resize_fraction={fraction}",
                    "--set",
                    f"data.resize_order={order}",
                    "--json",
                    figures,
                ]
            )
            result = json.loads(figures.read_text())
            rows[fraction, order] = result
            size = cfg.replace(**{"data.resize_fraction": fraction}).data.image_size
            print(
                json.dumps(
                    {
                        "resize_fraction": fraction,
                        "image_size": list(size),
                        "resize_order": order,
                        "R@1": result["R@1"],
                        "R@5": result["R@5"],
                        "eval_s": round(time.perf_counter() - start, 1),
                    }
                ),
                flush=True,
            )

    lines = [
        "| data.resize_fraction | image size (H×W) | paper R@1 / R@5 | pil R@1 / R@5 | R@1 paper − pil |",
        "|---|---|---|---|---|",
    ]
    for fraction in args.fractions:
        h, w = cfg.replace(**{"data.resize_fraction": fraction}).data.image_size
        paper, pil = rows[fraction, "paper"], rows[fraction, "pil"]
        lines.append(
            f"| {fraction:g} | {h}×{w} | {paper['R@1']:.1f} / {paper['R@5']:.1f} "
            f"| {pil['R@1']:.1f} / {pil['R@5']:.1f} | {paper['R@1'] - pil['R@1']:+.1f} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    if train_s is not None:
        print(f"training: {train_s:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
