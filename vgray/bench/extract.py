"""``vgray bench extract``: vgray's extraction path against the paper's way of extracting.

The baseline is a plain loop as the paper's code runs it: a torch DataLoader over PIL images,
fp32, batch 16, ``torch.no_grad``, default memory format, on its own fresh copy of the model
(:func:`reference_model`: vgray's path converts the model it prepares to channels-last in place),
with TF32 off for it (:func:`strict_fp32`: torch 2.14 lets cuDNN use TF32 for "fp32" convolutions
by default; the paper's fp32 is IEEE fp32). vgray's path is
:func:`vgray.evaluate.extract.iter_descriptors` (inference mode, channels-last, larger batches,
bf16 autocast and pinned transfers on a GPU). Same images, same model weights, same loader workers,
timed in the same run after a warm-up of each; the descriptors of both are compared too.

On a CUDA device this is the GPU figure of the scale-out issue: by default ResNet-50 conv4 + GeM at
480x640, end to end from 480x640 JPEG files (the synthetic test images scaled up and written to a
temporary folder), vgray's best path (``data.decode`` auto: JPEGs decoded in batches by nvjpeg on
the GPU, resized and normalised there; bf16 autocast, channels-last, batch 128, ``torch.compile``
with ``--compile``) against the paper's way (fp32, batch 16, PIL DataLoader, no_grad). Decoding
alone is timed too: loader workers decoding with PIL against bytes read by the workers and decoded
on the device. On the CPU the same code runs (decode on the CPU) with the small defaults.

``--preset large`` (or ``--actors``) measures Ray Data extraction instead
(:func:`vgray.distributed.descriptors.ray_descriptors`: decode tasks, the network in an actor pool,
descriptors gathered back to this process) with each count of ``--actors`` (default 1, 2, ... up
to half the cluster's CPUs, doubling), against the same single-process reference loop in the same
run, end to end as a caller sees it (actor start-up included; one untimed warm-up pipeline first).
The data is ``synthetic:<preset>``'s test database (``--set data.root=...`` for another). Ray:
``--address`` joins a running cluster, else a local one is started (``--num-cpus``) and shut
down at the end. ``ratio``: the best Ray Data images/s over the reference's.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vgray.bench import actor_counts, bench_parser, print_figures
from vgray.config import load_config
from vgray.console import Parser
from vgray.data.dataset import open_split
from vgray.data.images import device_transform
from vgray.errors import BadInput
from vgray.evaluate.extract import iter_descriptors
from vgray.evaluate.methods import create_method
from vgray.models import build_model
from vgray.runtime import Runtime, default_workers, resolve_device
from vgray.seeding import seed_everything
from vgray.values import count


class _PlainImages(Dataset):
    def __init__(self, paths, transform):
        from PIL import Image

        self.paths, self.transform, self.open = paths, transform, Image.open

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(self.open(self.paths[i]).convert("RGB")), i


#: What the baseline is, as the figures state it.
REFERENCE = "fp32 (TF32 off), batch 16, PIL DataLoader, no_grad, default memory format, own model copy"


def reference_model(cfg, model) -> torch.nn.Module:
    """The baseline's network: a fresh build of ``cfg.model`` holding ``model``'s weights, fp32, in
    the default memory format, in eval mode; never the object vgray's path prepares (which
    converts it to channels-last in place)."""
    fresh = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
    fresh.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
    return fresh.float().eval()


@contextmanager
def strict_fp32():
    """fp32 convolutions and matmuls in IEEE fp32, not TF32 (cuDNN's default for convolutions in
    torch 2.14), for the ``with`` block; the previous settings back afterwards."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def reference_extract(model, paths, transform, device, num_workers, batch_size=16):
    """The paper's loop: fp32 (TF32 off), batch 16, no_grad (``model``: :func:`reference_model`)."""
    model = model.to(device).eval()
    out = []
    loader = DataLoader(_PlainImages(paths, transform), batch_size=batch_size, num_workers=num_workers)
    with torch.no_grad(), strict_fp32():
        for images, _ in loader:
            out.append(model(images.to(device)).cpu().numpy())
    return np.concatenate(out)


def vgray_extract(model, paths, transform, rt):
    """vgray's extraction path: (N, D) descriptors of ``paths`` through ``iter_descriptors``."""
    return np.concatenate([d for _, d in iter_descriptors(model, paths, transform, rt, "bench")])


class _PilDecode(Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        with Image.open(self.paths[i]) as image:
            return pil_to_tensor(image.convert("RGB"))


def decode_pil(paths, workers, batch_size):
    """Decoding alone as the reference does it: PIL in loader workers, uint8 tensors."""
    loader = DataLoader(_PilDecode(paths), batch_size=batch_size, num_workers=workers, collate_fn=list)
    return sum(len(batch) for batch in loader)


def decode_device(paths, rt):
    """Decoding alone on vgray's device path: workers read bytes, the batch is decoded on rt.device."""
    from vgray.data.images import EncodedImages, decode_on_device
    from vgray.evaluate.extract import iter_batches

    n = 0
    for items, indices in iter_batches(EncodedImages(paths), rt, "decode"):
        images, _ = decode_on_device(items, [paths[i] for i in indices], rt.device)
        n += len(images)
    return n


def _write_jpegs(paths, size, count, folder):
    """``count`` JPEG files of ``size`` (H, W) in ``folder``: the images at ``paths`` (cycled) scaled."""
    from pathlib import Path

    from PIL import Image

    out = []
    for i in range(count):
        target = Path(folder) / f"{i:06d}.jpg"
        with Image.open(paths[i % len(paths)]) as image:
            image.convert("RGB").resize((size[1], size[0]), Image.BICUBIC).save(target, quality=90)
        out.append(str(target))
    return out


def _timed(fn, sync):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def parser() -> Parser:
    """``vgray bench extract``'s options (read by :func:`main`)."""
    p = bench_parser(
        "extract",
        "resnet18conv4 + gem on synthetic:tiny at 96x128; on a CUDA device "
        "resnet50conv4 + gem at 480x640 from 480x640 JPEGs",
    )
    p.add_argument("--images", type=count(16), default=None, help="database images to extract (512; CUDA: 2048)")
    p.add_argument("--batch-size", type=count(), default=None, help="vgray's batch size (64; CUDA: 128)")
    p.add_argument("--compile", action="store_true", help="vgray's path compiles the network (test.compile)")
    p.add_argument("--repeats", type=count(), default=2, help="timed runs of each path, alternating; best kept")
    p.add_argument(
        "--preset",
        choices=["tiny", "small", "large"],
        help="synthetic dataset (data.root); "
        "large: Ray Data extraction with 1, 2, ... actors against the reference loop",
    )
    p.add_argument(
        "--actors",
        help="Ray Data mode: comma-separated actor counts (default 1, 2, 4, ... up to half the cluster's CPUs)",
    )
    p.add_argument("--address", default=None, help="Ray Data mode: a running Ray cluster (auto or HOST:PORT)")
    p.add_argument("--num-cpus", type=count(), default=None, help="Ray Data mode: CPUs of the local Ray (default: all)")
    return p


def main(argv) -> None:
    """``vgray bench extract``: vgray's extraction (or Ray Data's, with ``--preset large``) against
    the paper's loop; prints images/s and the ratio last."""
    args = parser().parse_args(argv)
    preset = [f"data.root=synthetic:{args.preset}"] if args.preset else []
    cuda = resolve_device(load_config(overrides=args.overrides).device).type == "cuda"
    args.images = (2048 if cuda else 512) if args.images is None else args.images
    args.batch_size = (128 if cuda else 64) if args.batch_size is None else args.batch_size
    defaults = (
        ["model.backbone=resnet50conv4", "data.resize=[480,640]"]
        if cuda and not args.preset
        else ["data.resize=[96,128]"]
    )
    cfg = load_config(
        overrides=[
            "model.aggregation=gem",
            "model.pretrained=none",
            *defaults,
            f"test.batch_size={args.batch_size}",
            *preset,
            *(["test.compile=true"] if args.compile else []),
            *args.overrides,
        ]
    )
    if args.preset == "large" or args.actors:
        return ray_data_bench(cfg, args)
    if args.images < 16 or args.repeats < 1:
        raise BadInput(f"--images={args.images} must be at least 16 and --repeats={args.repeats} at least 1")
    split = open_split(cfg.data.root, cfg.test.split, cfg.data.msls_queries)
    paths = split.database.paths[: args.images]
    rt = Runtime.from_config(cfg, progress=False)
    with tempfile.TemporaryDirectory(prefix="vgray-bench-") as folder:
        if rt.device.type == "cuda" and not args.preset:
            paths = _write_jpegs(split.database.paths, cfg.data.image_size, args.images, folder)
        figures = _bench(cfg, args, paths, rt)
    print_figures(figures, args.json)


def _bench(cfg, args, paths, rt) -> dict:
    seed_everything(cfg.seed)
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    baseline = reference_model(cfg, model)  # its own module: vgray's path makes ``model`` channels-last
    transform = create_method(cfg, model.mean, model.std).database_transform
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    workers = default_workers(cfg.data.num_workers)
    decode_rt = dataclasses.replace(rt, decode="torchvision")

    # Warm-up of both paths (allocator, oneDNN/cuDNN kernel choice, worker start), then one timed run each.
    reference_extract(baseline, paths[:32], transform, rt.device, workers)
    vgray_extract(model, paths[: 2 * rt.batch_size], transform, rt)
    decode_pil(paths[:32], workers, 16)
    decode_device(paths[:32], decode_rt)
    # Alternate the two paths and keep each one's best run, so that a burst of load on the
    # machine does not land on one side only.
    ref_s = ours_s = float("inf")
    for _ in range(args.repeats):
        ref, seconds = _timed(lambda: reference_extract(baseline, paths, transform, rt.device, workers), sync)
        ref_s = min(ref_s, seconds)
        ours, seconds = _timed(lambda: vgray_extract(model, paths, transform, rt), sync)
        ours_s = min(ours_s, seconds)
    pil_s = min(_timed(lambda: decode_pil(paths, workers, 16), sync)[1] for _ in range(args.repeats))
    device_s = min(_timed(lambda: decode_device(paths, decode_rt), sync)[1] for _ in range(args.repeats))
    cos = float(np.mean(np.sum(ref * ours, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(ours, axis=1))))
    h, w = cfg.data.image_size
    figures = {
        "model": f"{cfg.model.backbone}+{cfg.model.aggregation}",
        "image_size": f"{h}x{w}",
        "device": str(rt.device) + (f" ({torch.cuda.get_device_name(rt.device)})" if rt.device.type == "cuda" else ""),
        "images": len(paths),
        "loader_workers": workers,
        "vgray_batch_size": rt.batch_size,
        "vgray_precision": str(rt.dtype).replace("torch.", ""),
        "vgray_decode": "torchvision" if device_transform(rt, transform) is not None else "pil",
        "vgray_compile": rt.compile,
        "decode_pil_images_per_s": len(paths) / pil_s,
        f"decode_torchvision_{rt.device.type}_images_per_s": len(paths) / device_s,
        "decode_ratio": pil_s / device_s,
        "reference_images_per_s": len(paths) / ref_s,
        "vgray_images_per_s": len(paths) / ours_s,
        "descriptor_cosine": cos,
        "reference": REFERENCE,
        "ratio": ref_s / ours_s,
    }
    return figures


def _counts(text, cpus: float):
    if not text:
        counts, n = [], 1
        while n <= max(1, int(cpus) // 2):
            counts.append(n)
            n *= 2
        return counts
    return actor_counts(text)


def ray_data_bench(cfg, args) -> None:
    """Ray Data extraction with each actor count against the reference loop (``--preset large``)."""
    from vgray.distributed.cluster import cluster_summary, ray_session
    from vgray.distributed.descriptors import ray_descriptors

    if args.images < 16 or args.repeats < 1:
        raise BadInput(f"--images={args.images} must be at least 16 and --repeats={args.repeats} at least 1")
    if args.actors:
        _counts(args.actors, 1)  # a bad list is refused before anything starts
    split = open_split(cfg.data.root, cfg.test.split, cfg.data.msls_queries)
    paths = split.database.paths[: args.images]
    seed_everything(cfg.seed)
    model = build_model(cfg.model, image_size=cfg.data.image_size).eval()
    baseline = reference_model(cfg, model)
    rt = Runtime.from_config(cfg, progress=False)
    transform = create_method(cfg, model.mean, model.std).database_transform
    workers = default_workers(cfg.data.num_workers)
    with ray_session(args.address, args.num_cpus):
        cluster = cluster_summary()
        cpus = cluster["cpus"]
        counts = _counts(args.actors, cpus)
        reference_extract(baseline, paths[:32], transform, rt.device, workers)
        ray_descriptors(cfg, model, paths[:32], transform, model.features_dim, False, args.batch_size, counts[0])
        ref_s, ray_s = float("inf"), {n: float("inf") for n in counts}
        cosine = {}
        for _ in range(args.repeats):
            ref, seconds = _timed(
                lambda: reference_extract(baseline, paths, transform, rt.device, workers), lambda: None
            )
            ref_s = min(ref_s, seconds)
            for n in counts:
                (got, _), seconds = _timed(
                    lambda n=n: ray_descriptors(
                        cfg, model, paths, transform, model.features_dim, False, args.batch_size, n
                    ),
                    lambda: None,
                )
                ray_s[n] = min(ray_s[n], seconds)
                cosine[n] = float(
                    np.min(np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)))
                )
        h, w = cfg.data.image_size
        figures = {
            "model": f"{cfg.model.backbone}+{cfg.model.aggregation}",
            "data": cfg.data.root,
            "image_size": f"{h}x{w}",
            "images": len(paths),
            "cluster_cpus": cpus,
            "nodes": cluster["nodes"],
            "loader_workers": workers,
            "reference_images_per_s": len(paths) / ref_s,
        }
        for n in counts:
            figures[f"actors={n} images_per_s"] = len(paths) / ray_s[n]
            figures[f"actors={n} vs_reference"] = ref_s / ray_s[n]
            figures[f"actors={n} min_cosine"] = cosine[n]
        figures["ratio"] = ref_s / min(ray_s.values())
    print_figures(figures, args.json)
