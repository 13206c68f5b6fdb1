#!/usr/bin/env python
"""What training buys from random weights: one row of the README's training table a run.

Scores a randomly initialised network on the test split twice (as initialised, and with BatchNorm
statistics calibrated on the training database, no weight update), trains the same network with
``vgray.train.loop.train`` and prints the before/after test recalls and the wall times, as one JSON
line and one README table row::

    .venv/bin/python scripts/training_evidence.py --set train.mining=random --out runs/evidence-random

The defaults are the README's: synthetic ``small``, ResNet-18 conv4 + GeM at 90x120 from random
weights, Adam at 1e-3, 10 epochs of 200 queries (no early stop: the best epoch by val R@5 is tested),
cache refreshed every 100 queries, 4 negatives, a partial-mining sample of 300; every ``--set``
overrides them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

DEFAULTS = [
    "data.root=synthetic:small",
    "model.pretrained=none",
    "model.backbone=resnet18conv4",
    "model.aggregation=gem",
    "data.resize=[90,120]",
    "train.lr=0.001",
    "train.queries_per_epoch=200",
    "train.cache_refresh_rate=100",
    "train.negs_num_per_query=4",
    "train.neg_samples_num=300",
    "train.epochs=10",
    "train.patience=100",
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", required=True, help="training run folder")
    args = parser.parse_args(argv)

    from vgray.config import load_config
    from vgray.data.dataset import open_split
    from vgray.data.transforms import test_transform
    from vgray.errors import BadInput
    from vgray.evaluate.evaluate import evaluate_split
    from vgray.evaluate.extract import calibrate_batchnorm
    from vgray.models import build_model
    from vgray.runtime import Runtime
    from vgray.seeding import seed_everything
    from vgray.train.loop import train

    try:
        cfg = load_config(overrides=[*DEFAULTS, *args.set])
        test, train_split = open_split(cfg.data.root, "test"), open_split(cfg.data.root, "train")
        seed_everything(cfg.seed)
        model = build_model(cfg.model, image_size=cfg.data.image_size)
        before = evaluate_split(model, test, cfg, progress=False)
        calibrate_batchnorm(
            model,
            train_split.database.paths,
            test_transform(cfg.data.image_size, model.mean, model.std, cfg.data.resize_order),
            Runtime.from_config(cfg, progress=False),
        )
        calibrated = evaluate_split(model, test, cfg, progress=False)
        start = time.perf_counter()
        result = train(cfg, args.out, progress=False, log=lambda line: print(line, file=sys.stderr, flush=True))
        seconds = time.perf_counter() - start
    except BadInput as e:
        print(f"training_evidence: {e}", file=sys.stderr)
        return 2
    name = next(key for key in result if key.startswith("test/") and key.endswith("/R@1"))[: -len("R@1")]
    after = {k: result[name + k] for k in ("R@1", "R@5")}
    row = {
        "overrides": args.set,
        "untrained": {k: before[k] for k in ("R@1", "R@5")},
        "untrained_bn_calibrated": {k: calibrated[k] for k in ("R@1", "R@5")},
        "trained": after,
        "gain_r1": after["R@1"] - before["R@1"],
        "gain_r1_over_calibrated": after["R@1"] - calibrated["R@1"],
        "train_s": round(seconds, 1),
    }
    print(json.dumps(row))
    print(
        f"| {' '.join(args.set) or 'defaults'} | {before['R@1']:.1f} / {before['R@5']:.1f} "
        f"| {calibrated['R@1']:.1f} / {calibrated['R@5']:.1f} | {after['R@1']:.1f} / {after['R@5']:.1f} "
        f"| {row['gain_r1']:+.1f} | {row['gain_r1_over_calibrated']:+.1f} | {seconds:.0f} s |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
