"""The Python parts of ``scripts/gpu_check.sh``, the prepared script of a first GPU session.

``python -m vgray.bench.gpu_check STEP --out DIR`` writes ``DIR/gpu_check_STEP.json``:

- ``jpegs``: four kinds of JPEG (baseline, progressive, greyscale, CMYK; made here with PIL)
  decoded by libjpeg-turbo on the CPU and by vgray's device path (:func:`~vgray.data.images.
  decode_on_device`: nvjpeg on a GPU, with its fallbacks) and by a bare nvjpeg call: images/s,
  the output shape (RGB, 3 channels, for every kind), and the largest pixel difference to the CPU
  decode and to PIL's RGB conversion.
- ``precision``: an untrained ResNet-18 conv4 + NetVLAD (clusters from the database) evaluated on
  the synthetic world at fp32 and under bf16 autocast: recall@N of each, and the cosine of each
  image's bf16 descriptor to its fp32 one (mean and min).
- ``heads``: today's heads at their published input sizes (by default DINOv2-B + SALAD at
  322x322, and ResNet-50 layer3 + MixVPR and + BoQ at 320x320), untrained (``pretrained: none``):
  the network's images/s on batches already on the device at fp32 (TF32 off) against bf16
  autocast, measured in one run, and the cosine of each image's bf16 descriptor to its fp32 one.
  Extraction's model side alone (the loader is timed by ``bench extract``).
- ``devices`` (``scripts/gpu_check_devices.py``: Ray lives in vgray.distributed and scripts only):
  on a local Ray holding this machine's GPUs, where tasks shaped like ``gpu: 0.5`` trials (two at
  once) and a ``gpu: 0`` one would run (:func:`vgray.distributed.devices.device_report`).
- ``sweep-file``: a short sweep YAML of two ``gpu: 0.5`` trials, for the script to run;
  ``sweep-figures`` after it: the processes ``nvidia-smi`` saw on the GPU while it ran (one a
  trial; their pids and memory) and the rows of its results.
- ``train-group``: one short training run in this process and the same run through Ray Train's
  path (a group of one worker, forced: :func:`vgray.distributed.ddp.run_group`, NCCL initialised
  on a GPU), on a local Ray holding this machine's GPU: each run's training images/s (mining
  refreshes included), their ratio (within 10 % is the target), and the backend.
- ``assemble``: one JSON of every step's figures, exit status, time and log tail
  (``DIR/gpu_check.json``), printed.

On a machine without CUDA the ``jpegs``, ``heads`` and ``precision`` steps run with
``--device cpu`` (the quick tests do that); the script itself refuses to start without CUDA.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

#: The four JPEG kinds: (PIL mode, save options).
JPEG_KINDS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "baseline": ("RGB", {}),
    "progressive": ("RGB", {"progressive": True}),
    "greyscale": ("L", {}),
    "cmyk": ("CMYK", {}),
}
#: The steps that write ``gpu_check_<step>.json``, in the script's order.
STEPS = (
    "jpegs",
    "cuda_tests",
    "heads",
    "bench_eager",
    "precision",
    "devices",
    "sweep",
    "train_group",
    "bench_compiled",
)


def _picture(seed: int, size) -> np.ndarray:
    """A smooth RGB picture (compresses like a photograph, unlike noise) of ``size`` (H, W)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]] / max(size)
    channels = [np.sin(x * rng.uniform(3, 20) + y * rng.uniform(3, 20) + rng.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)


def write_jpegs(folder: Path, count: int, size=(480, 640)) -> Dict[str, List[str]]:
    """``count`` JPEG files of each kind in ``folder``: ``{kind: paths}``."""
    from PIL import Image

    out: Dict[str, List[str]] = {}
    for kind, (mode, options) in JPEG_KINDS.items():
        (folder / kind).mkdir(parents=True, exist_ok=True)
        out[kind] = []
        for i in range(count):
            path = folder / kind / f"{i:04d}.jpg"
            Image.fromarray(_picture(i, size)).convert(mode).save(path, quality=90, **options)
            out[kind].append(str(path))
    return out


def _timed(fn: Callable, device: torch.device, repeats: int = 3):
    """``(result, best seconds)`` of ``fn()`` over ``repeats`` runs after one warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    result, best = fn(), float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return result, best


def _max_diff(a: List[torch.Tensor], b: List[torch.Tensor]) -> int:
    return max(int((x.cpu().int() - y.cpu().int()).abs().max()) for x, y in zip(a, b))


def _bare_nvjpeg(data: List[torch.Tensor], device: torch.device):
    """torchvision's batched decode alone on ``device`` (no fallback): the images or the error."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device), None
    except Exception as exc:  # what nvjpeg says about this kind is a figure here
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def jpeg_figures(paths: List[str], device: torch.device) -> Dict[str, object]:
    """Decode figures of one kind's files: CPU and device images/s, shapes, differences."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from vgray.data.images import ByteBatch, EncodedImages, decode_on_device

    items = [EncodedImages(paths).load(i) for i in range(len(paths))]
    batch = ByteBatch.pack(items)  # what vgray's loader hands the device (CMYK decoded in the worker)
    data = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8) for p in paths]
    pil = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1) for p in paths]
    cpu, cpu_s = _timed(lambda: [decode_jpeg(t, mode=ImageReadMode.RGB) for t in data], torch.device("cpu"))
    (dev, errors), dev_s = _timed(lambda: decode_on_device(batch, paths, device), device)
    bare, bare_error = _bare_nvjpeg(data, device)
    return {
        "images": len(paths),
        "kinds_read": sorted({kind for kind, _ in items}),
        "cpu_images_per_s": round(len(paths) / cpu_s, 1),
        "device_images_per_s": round(len(paths) / dev_s, 1),
        "device_errors": len(errors),
        "shapes_rgb": all(x is not None and x.shape[0] == 3 and x.shape[1:] == p.shape[1:] for x, p in zip(dev, pil)),
        "max_diff_cpu_vs_pil": _max_diff(cpu, pil),
        "max_diff_device_vs_cpu": _max_diff(dev, cpu),
        "max_diff_device_vs_pil": _max_diff(dev, pil),
        "bare_decode": "ok" if bare is not None else bare_error,
        "bare_max_diff_vs_pil": _max_diff(bare, pil) if bare is not None else None,
    }


def step_jpegs(out: Path, device: torch.device, count: int, size) -> Dict[str, object]:
    """Figures of every JPEG kind (files made in ``out/jpegs``)."""
    files = write_jpegs(out / "jpegs", count, size)
    return {
        "device": str(device),
        "size": list(size),
        "kinds": {kind: jpeg_figures(paths, device) for kind, paths in files.items()},
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def step_precision(device: str, root: str, size, extra: Sequence[str] = ()) -> Dict[str, object]:
    """NetVLAD at fp32 (TF32 off) against bf16 autocast on ``root``'s test split: recalls and
    descriptor cosine. The network is untrained (NetVLAD's clusters from the database), so the
    recalls say little of a trained model's; the cosine is the figure."""
    from vgray.bench.extract import strict_fp32
    from vgray.config import load_config
    from vgray.data.dataset import open_split
    from vgray.evaluate.evaluate import evaluate_split, initialize_on_database
    from vgray.evaluate.extract import extract_descriptors
    from vgray.models import build_model
    from vgray.runtime import Runtime

    cfg = load_config(
        overrides=[
            f"data.root={root}",
            "model.backbone=resnet18conv4",
            "model.aggregation=netvlad",
            "model.pretrained=none",
            f"data.resize=[{size[0]},{size[1]}]",
            f"device={device}",
            *extra,
        ]
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    split = open_split(cfg.data.root, "test")
    rt = Runtime.from_config(cfg, progress=False)
    initialize_on_database(model, cfg, split.database, rt)
    out: Dict[str, Any] = {"device": str(rt.device), "root": root, "size": list(size)}
    descriptors: Dict[str, np.ndarray] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        kept: List[np.ndarray] = []

        def extractor(*args, kept=kept, **kwargs):
            x, valid = extract_descriptors(*args, **kwargs)
            kept.append(x)
            return x, valid

        start = time.perf_counter()
        with strict_fp32() if dtype == torch.float32 else nullcontext():  # fp32 without TF32
            figures = evaluate_split(
                model, split, cfg, dataclasses.replace(rt, dtype=dtype), extractor=extractor, progress=False
            )
        out[name] = {k: v for k, v in figures.items() if k.startswith("R@")}
        out[name]["seconds"] = round(time.perf_counter() - start, 2)
        descriptors[name] = np.concatenate(kept)
    cos = _cosines(descriptors["fp32"], descriptors["bf16"])
    out["descriptor_cosine"] = {"mean": float(cos.mean()), "min": float(cos.min()), "images": len(cos)}
    return out


#: The ``heads`` step's networks: (backbone, aggregation, input side, more config overrides).
HEADS = (
    ("dinov2_vitb14", "salad", 322, ()),
    ("resnet50conv4", "mixvpr", 320, ("model.mixvpr_map_size=[20,20]",)),
    ("resnet50conv4", "boq", 320, ()),
)


def step_heads(device: str, heads=HEADS, batch: int = 64, batches: int = 5) -> Dict[str, object]:
    """Each head's images/s (``batches`` batches of ``batch`` random images on the device, best of 3
    after a warm-up) at fp32 without TF32 against bf16 autocast, through the runtime's own
    preparation (channels-last, eval, inference mode), and the bf16 descriptors' cosine to fp32's."""
    from vgray.bench.extract import strict_fp32
    from vgray.config import load_config
    from vgray.models import build_model
    from vgray.runtime import Runtime

    out: Dict[str, object] = {"device": device, "batch": batch, "batches": batches}
    for backbone, aggregation, side, extra in heads:
        cfg = load_config(
            overrides=[
                f"model.backbone={backbone}",
                f"model.aggregation={aggregation}",
                "model.pretrained=none",
                f"data.resize=[{side},{side}]",
                f"device={device}",
                *extra,
            ]
        )
        torch.manual_seed(0)
        rt = Runtime.from_config(cfg, progress=False)
        model = rt.prepare(build_model(cfg.model, image_size=cfg.data.image_size))
        images = rt.to_device(torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0)))
        entry: Dict[str, Any] = {"input": [side, side]}
        descriptors = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            run = dataclasses.replace(rt, dtype=dtype)

            def forward(run=run, model=model, images=images):
                with torch.inference_mode(), run.autocast():
                    for _ in range(batches):
                        last = model(images)
                return last.float()

            with strict_fp32() if dtype == torch.float32 else nullcontext():
                result, seconds = _timed(forward, rt.device)
            entry[f"{name}_images_per_s"] = round(batch * batches / seconds, 1)
            descriptors[name] = result.cpu().numpy()
        entry["dim"] = int(descriptors["fp32"].shape[1])
        entry["bf16_over_fp32"] = round(entry["bf16_images_per_s"] / entry["fp32_images_per_s"], 2)
        cos = _cosines(descriptors["fp32"], descriptors["bf16"])
        entry["descriptor_cosine"] = {"mean": float(cos.mean()), "min": float(cos.min())}
        out[f"{backbone}+{aggregation}"] = entry
        del model, images
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def sweep_yaml(storage: Path) -> str:
    """A sweep of two short ``gpu: 0.5`` trials on the synthetic tiny world."""
    return f"""name: gpu_check
base:
  data: {{root: "synthetic:tiny", resize: [96, 128]}}
  model: {{backbone: resnet18conv4, pretrained: none}}
  train: {{queries_per_epoch: 40, cache_refresh_rate: 40, negs_num_per_query: 2, neg_samples_num: 100, epochs: 1}}
  test: {{batch_size: 32}}
grid:
  model.aggregation: [gem, netvlad]
repeats: 1
resources: {{cpu: 2, gpu: 0.5}}
storage: {storage}
max_failures: 0
"""


def sweep_storage() -> Path:
    """Where the check's sweep keeps its results (outside the folder that travels back)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "vgray_gpu_check_sweep"


def step_sweep_figures(out: Path) -> Dict[str, object]:
    """The GPU processes of the sweep (``out/sweep_gpu_procs.csv``: nvidia-smi's ``pid, name,
    MiB`` lines) with their largest memory, and the sweep's result rows (trial, device columns)."""
    procs: Dict[str, Dict[str, Any]] = {}
    csv = out / "sweep_gpu_procs.csv"
    for line in csv.read_text().splitlines() if csv.exists() else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[2].isdigit():
            entry = procs.setdefault(parts[0], {"name": parts[1], "max_mib": 0})
            entry["max_mib"] = max(entry["max_mib"], int(parts[2]))
    rows = sweep_storage() / "gpu_check" / "results.parquet"
    figures: Dict[str, object] = {"gpu_processes": procs, "results_rows": None}
    if rows.exists():
        import pyarrow.parquet as pq

        table = pq.read_table(rows)
        figures["results_rows"] = table.num_rows
        figures["columns_with_device"] = [c for c in table.column_names if "device" in c or "gpu" in c]
    return figures


def _cuda_tests(out: Path) -> Dict[str, object]:
    """The counts of pytest's junit file ``out/cuda_tests.xml`` (empty without it)."""
    import xml.etree.ElementTree as ET

    path = out / "cuda_tests.xml"
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None  # pytest's junit file holds a testsuite
    failed = [
        c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None
    ]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {"failed": failed}


def _log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def assemble(out: Path) -> Dict[str, object]:
    """``out/gpu_check.json``: each step's exit status, seconds and figures (``gpu_check_STEP.json``)
    from ``out/status.tsv`` (lines ``step<TAB>rc<TAB>seconds``, written by the script), with the tail
    of its log (``STEP.log``) when it failed; a step with no status line is ``not run``."""
    status: Dict[str, Dict[str, Any]] = {}
    if (out / "status.tsv").exists():
        for line in (out / "status.tsv").read_text().splitlines():
            step, rc, seconds = line.split("\t")
            status[step] = (
                {"rc": None, "skipped": "the script's time budget was spent"}
                if rc == "skipped"
                else {"rc": int(rc), "seconds": float(seconds), "timed_out": int(rc) in (124, 137)}
            )
    steps = {}
    for step in STEPS:
        entry = dict(status.get(step, {"rc": None, "not_run": True}))
        figures = out / f"gpu_check_{step}.json"
        if figures.exists():
            entry["figures"] = json.loads(figures.read_text())
        elif step == "cuda_tests" and _cuda_tests(out):
            entry["figures"] = _cuda_tests(out)
        if entry.get("rc") not in (0, None):
            entry["log_tail"] = _log_tail(out / f"{step}.log")
        steps[step] = entry
    result: Dict[str, object] = {
        "device": _device_name(),
        "torch": torch.__version__,
        "steps": steps,
        "failed": [s for s, e in steps.items() if e.get("rc") not in (0, None)],
    }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def step_train_group(device: str, root: str, size) -> Dict[str, object]:
    """The ``train-group`` step: the same short run in-process and as a one-worker Ray Train group."""
    import tempfile

    from vgray.config import load_config
    from vgray.distributed.ddp import WorkerShape, backend, run_group
    from vgray.distributed.sweep import init_ray
    from vgray.train.loop import train

    cfg = load_config(
        overrides=[
            f"data.root={root}",
            "model.backbone=resnet18conv4",
            "model.aggregation=gem",
            "model.pretrained=none",
            f"data.resize=[{size[0]},{size[1]}]",
            f"device={device}",
            "train.queries_per_epoch=200",
            "train.cache_refresh_rate=100",
            "train.epochs=2",
            "train.patience=2",
        ]
    )
    gpu = 1.0 if device != "cpu" else 0.0
    shape = WorkerShape(cpu=max(1, (os.cpu_count() or 2) // 2), gpu=gpu)
    out: Dict[str, Any] = {"device": _device_name() if gpu else "cpu", "backend": backend(cfg, shape)}
    with tempfile.TemporaryDirectory(prefix="vgray-gpu-check-") as folder:
        start = time.perf_counter()
        here = train(cfg, Path(folder) / "here", progress=False, log=lambda *a: None)
        out["inprocess_seconds"] = round(time.perf_counter() - start, 2)
        init_ray(None, num_cpus=os.cpu_count())
        start = time.perf_counter()
        group = run_group(cfg, Path(folder) / "group", shape)  # train.workers=1: the Train path, forced
        out["ray_train_seconds"] = round(time.perf_counter() - start, 2)
    out["inprocess_images_per_s"] = here["train_images_per_s"]
    out["ray_train_images_per_s"] = group["train_images_per_s"]
    out["ratio"] = group["train_images_per_s"] / here["train_images_per_s"]
    out["test_r1"] = {
        name: next((v for k, v in run.items() if k.startswith("test/") and k.endswith("/R@1")), None)
        for name, run in (("inprocess", here), ("ray_train", group))
    }
    return out


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA)"


def main(argv=None) -> None:
    from vgray.console import Parser
    from vgray.paths import path_type
    from vgray.values import count

    # vgray's own parser and doors: usage errors, paths and counts refused in one line, exit 2
    p = Parser(prog="python -m vgray.bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument(
        "step", choices=["jpegs", "heads", "precision", "sweep-file", "sweep-figures", "train-group", "assemble"]
    )
    p.add_argument("--out", required=True, type=path_type("--out", "out_dir"), help="folder of the JSON files")
    p.add_argument("--device", default="cuda", help="device of the jpegs, heads and precision steps")
    p.add_argument("--count", type=count(), default=256, help="jpegs: files of each kind")
    p.add_argument("--size", type=count(), nargs=2, default=None, help="image size H W")
    p.add_argument(
        "--root",
        default="synthetic:tiny",
        help="precision: the dataset (tiny: built by the bench step before, 96x128 images)",
    )
    args = p.parse_args(argv)
    args.out = Path(args.out).expanduser()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "assemble":
        print(json.dumps(assemble(args.out), indent=1, default=str))
        return
    if args.step == "sweep-file":
        import shutil

        shutil.rmtree(sweep_storage() / "gpu_check", ignore_errors=True)  # this check's own, from a run before
        (args.out / "sweep.yaml").write_text(sweep_yaml(sweep_storage()))
        return
    name = args.step
    if args.step == "jpegs":
        figures = step_jpegs(args.out, torch.device(args.device), args.count, args.size or (480, 640))
    elif args.step == "precision":
        figures = step_precision(args.device, args.root, args.size or (96, 128))
    elif args.step == "heads":
        figures = step_heads(args.device)
    elif args.step == "train-group":
        figures, name = step_train_group(args.device, args.root, args.size or (96, 128)), "train_group"
    else:
        figures, name = step_sweep_figures(args.out), "sweep"
    (args.out / f"gpu_check_{name}.json").write_text(json.dumps(figures, indent=1, default=str))
    print(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    from vgray.errors import BadInput

    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        main(sys.argv[1:])
    except BadInput as exc:  # as vgray's own commands: one line, exit status 2
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        sys.exit(2)
