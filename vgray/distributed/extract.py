"""``vgray extract``: descriptors of a whole split through Ray Data, written as parquet shards.

Paper: Berton et al., "Deep Visual Geo-localization Benchmark", CVPR 2022 (the pipeline's
extraction stage, spread over a cluster). Ray Data reads, decodes and transforms the images in CPU
tasks; a pool of actors (one per GPU, else CPU actors that leave CPUs to the decode stage) runs
the network, built once per actor from the config and the weights the driver saved to
``OUT/model.pt`` (so NetVLAD's clusters are the same everywhere). The driver writes
``OUT/<role>/shard-00000.parquet``, one file per ``shard_size`` images, with the
``--save-descriptors`` columns and file metadata (model hash, descriptor size, image range,
count), each to a temporary name moved into place. A re-run keeps the shards that are complete and
of this model; a truncated shard or one of another model is extracted again, never mixed.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vgray.atomic import atomic_path
from vgray.errors import BadInput
from vgray.saved_descriptors import INDEX_FILE

if TYPE_CHECKING:
    import ray.data

    from vgray.data.dataset import Split
    from vgray.models.network import GeoLocalizationNet

ROLES = ("database", "queries")
META_KEY = b"vgray"
BLOCK_BATCHES = 32  # most batches in one work block (see block_rows)
MIN_BLOCKS = 64  # fewest work blocks, where there are images enough


def shard_path(out: Path, role: str, k: int) -> Path:
    return Path(out) / role / f"shard-{k:05d}.parquet"


# Keys of ``model`` that choose where weights come from, not what the network computes.
_WEIGHT_SOURCES = ("pretrained", "resume_from")


def model_hash(model, cfg) -> str:
    """sha1 of what makes a descriptor: the network's tensors (``state_dict`` in key order: name,
    dtype, shape and bytes of each) and its architecture (``cfg.model`` without the keys that only
    say where the weights came from, the input size ``data.image_size`` and ``data.resize_order``,
    which changes the pixels the network sees below the native size). Stable for the same
    weights however they were saved or loaded (a ``torch.save`` file's bytes are not: the zip
    holds pickled object ids and record names)."""
    import torch

    h = hashlib.sha1()
    arch = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in _WEIGHT_SOURCES}
    h.update(
        json.dumps(
            {"model": arch, "image_size": list(cfg.data.image_size), "resize_order": cfg.data.resize_order},
            sort_keys=True,
        ).encode()
    )
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"\n{key}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def paths_sha1(paths: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()


@dataclass(frozen=True)
class Shard:
    """Images ``start:stop`` of ``role``, the work of one parquet file."""

    role: str
    k: int
    start: int
    stop: int


def shard_problem(path: Path, meta_expected: Dict) -> Optional[str]:
    """None when ``path`` is a complete shard with the ``meta_expected`` facts, else why not."""
    if not path.is_file():
        return "missing"
    try:
        md = pq.read_metadata(path)
        meta = json.loads((md.metadata or {}).get(META_KEY, b"{}"))
    except Exception as exc:
        return f"unreadable ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})"
    for key, want in meta_expected.items():
        if meta.get(key) != want:
            return f"{key} is {meta.get(key)!r}, expected {want!r}"
    if md.num_rows != meta.get("count"):
        return f"holds {md.num_rows} rows, its metadata says {meta.get('count')}"
    return None


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def decode_images(
    batch: Dict[str, np.ndarray], transforms: Dict[str, Callable[..., Any]], shape: tuple
) -> Dict[str, np.ndarray]:
    """Ray Data stage 1 (CPU tasks): paths -> transformed images (B, 3, H, W) float32; an image that
    cannot be read becomes zeros of ``shape`` with its message in ``error`` (the driver decides)."""
    from vgray.data.images import UnreadableImage, read_image

    images, errors = [], []
    for path, role in zip(batch["path"], batch["role"]):
        try:
            images.append(transforms[str(role)](read_image(str(path))).numpy())
            errors.append("")
        except UnreadableImage as exc:
            images.append(None)
            errors.append(str(exc))
    stacked = np.stack([im if im is not None else np.zeros(shape, np.float32) for im in images])
    return {"role": batch["role"], "index": batch["index"], "image": stacked, "error": np.asarray(errors, dtype=object)}


class _Embed:
    """Ray Data stage 2 (actor pool): the network, built once per actor from the config and the
    driver's weights (``model_file``, or ``state``: a state dict or an object-store reference to
    one); images -> descriptors (B, d) float32."""

    def __init__(self, cfg, model_file: Optional[str] = None, state=None):
        from vgray.checkpoint import read_state_dict
        from vgray.distributed.devices import use_ray_devices
        from vgray.models import build_model
        from vgray.runtime import Runtime

        use_ray_devices()  # the actor's device is the GPU Ray gave it, or the CPU
        self.rt = Runtime.from_config(cfg, progress=False)
        model = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
        if model_file is not None:
            state = read_state_dict(model_file)
        elif not isinstance(state, dict):
            import ray

            state = ray.get(state)
        model.load_state_dict(state)
        self.model = self.rt.prepare(model)
        self.features_dim = model.features_dim

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import torch

        ok = np.asarray([e == "" for e in batch["error"]], dtype=bool)
        out = np.zeros((len(ok), self.features_dim), dtype=np.float32)
        if ok.any():
            with torch.inference_mode(), self.rt.autocast():
                images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))
                out[ok] = self.rt.forward(self.model, self.rt.to_device(images)).float().cpu().numpy()
        return {"role": batch["role"], "index": batch["index"], "descriptor": out, "error": batch["error"]}


def block_rows(images: int, batch_size: int) -> int:
    """Rows of each work block: one batch where the work is small (every decode slot gets blocks),
    up to :data:`BLOCK_BATCHES` batches as it grows, keeping at least :data:`MIN_BLOCKS` blocks.
    Each block is a decode task, and a task costs Ray Data far more than a batch's decoding at
    small image sizes: on the two-core machine, the rsf world (60×80) went through in blocks of
    one batch of 32 at 336 images/s, in blocks of 384 to 1,024 rows at about 800."""
    return batch_size * max(1, min(BLOCK_BATCHES, images // (batch_size * MIN_BLOCKS)))


def work_blocks(parts: Sequence[Tuple[str, Sequence[str], int, int]], rows: int) -> List[pa.Table]:
    """The work of an extraction as Arrow tables of at most ``rows`` rows (``role``, ``index``,
    ``path``), one Ray Data block each: for every ``(role, paths, start, stop)``, images
    ``paths[start:stop]``. Each block owns its buffers (no slice of a larger table travels whole),
    and no Python object per image is kept: a million paths cost their bytes, not a million dicts."""
    from vgray.data.dataset import Paths

    blocks = []
    for role, paths, start, stop in parts:
        for s in range(start, stop, rows):
            e = min(s + rows, stop)
            chunk = paths[s:e]
            blocks.append(
                pa.table(
                    {
                        "role": pa.array([role] * (e - s), pa.string()),
                        "index": pa.array(np.arange(s, e, dtype=np.int64)),
                        "path": chunk.to_arrow() if isinstance(chunk, Paths) else pa.array(list(chunk), pa.string()),
                    }
                )
            )
    return blocks or [
        pa.table(
            {"role": pa.array([], pa.string()), "index": pa.array([], pa.int64()), "path": pa.array([], pa.string())}
        )
    ]


def pipeline(
    cfg,
    blocks: List[pa.Table],
    transforms: Dict[str, Callable[..., Any]],
    embed: Dict[str, object],
    plan: Dict[str, Any],
    batch_size: int,
    progress: bool,
):
    """The Ray Data dataset of every extraction: ``blocks`` (:func:`work_blocks`) decoded and transformed
    (``transforms[role]``) in CPU tasks, the network in an actor pool (:class:`_Embed`, built from
    ``embed``: ``model_file`` or ``state``). ``plan``: the actors and each stage's resources, and
    for a trial's placement group its ``strategy`` and resource ``limits`` (else the cluster's)."""
    import ray
    from ray.data import ExecutionResources

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = False
    limits = plan.get("limits")
    ctx.execution_options.resource_limits = (
        ExecutionResources.for_limits(cpu=limits[0], gpu=limits[1])
        if limits is not None
        else ExecutionResources.for_limits()
    )
    placed: Dict[str, Any] = {"scheduling_strategy": plan["strategy"]} if plan.get("strategy") is not None else {}
    shape = (3, *cfg.data.image_size)
    # from_blocks reads each block's metadata here; from_arrow would start a remote task per block,
    # which inside a trial whose placement group holds every CPU waits for ever.
    ds: ray.data.Dataset = ray.data.from_blocks(blocks)
    decode_args: Dict[str, Any] = dict(num_cpus=plan["decode_cpus"], **placed)
    if not placed:
        # Ray Data fuses a task stage into the next actor stage when their remote arguments agree,
        # which would decode inside the model actors and leave the CPUs set aside for decoding
        # idle: the decode tasks' memory request keeps them apart. A decode worker holds
        # torchvision and PIL (about 450 MiB measured) and a few batches.
        decode_args["memory"] = (512 << 20) + 4 * batch_size * int(np.prod(shape)) * 4
    ds = ds.map_batches(
        decode_images,  # type: ignore[arg-type]  # Ray's type of fn leaves out what fn_kwargs give
        fn_kwargs={"transforms": transforms, "shape": shape},
        batch_size=batch_size,
        batch_format="numpy",
        **decode_args,
    )
    return ds.map_batches(
        _Embed,
        fn_constructor_kwargs={"cfg": cfg, **embed},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=plan["actors"],
        num_cpus=plan["actor_cpus"],
        num_gpus=plan["actor_gpus"],
        **placed,
    )


def _prepare_model(cfg, split, out: Path, progress: bool):
    """The network of ``cfg``, its :func:`model_hash`, and whether it was built now. A folder
    written for this very config keeps its model.pt (so its shards stay valid); otherwise the model
    is built (NetVLAD initialised from the database, as ``vgray eval`` does), and
    :func:`extract` writes ``config.yaml`` and ``model.pt``. Writes nothing itself."""
    from vgray.evaluate.evaluate import check_before_extraction
    from vgray.evaluate.extract import initialize_aggregation
    from vgray.evaluate.methods import create_method
    from vgray.models import build_model
    from vgray.runtime import Runtime
    from vgray.saved_descriptors import CONFIG_FILE, MODEL_FILE, load_model
    from vgray.seeding import seed_everything

    same = (
        (out / CONFIG_FILE).is_file()
        and (out / MODEL_FILE).is_file()
        and (out / CONFIG_FILE).read_bytes() == cfg.to_yaml().encode()
    )
    if same:
        model = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
        try:
            load_model(out, model)
        except BadInput:  # a damaged or foreign model.pt: made again, and the shards with it
            same = False
    if not same:
        seed_everything(cfg.seed)
        model = build_model(cfg.model, image_size=cfg.data.image_size)
        check_before_extraction(cfg, model)
        if model.needs_init():
            method = create_method(cfg, model.mean, model.std)
            initialize_aggregation(
                model,
                split.database.paths,
                method.database_transform,
                Runtime.from_config(cfg, progress=progress),
                seed=cfg.seed,
            )
    return model, model_hash(model, cfg), not same


def _transforms(cfg, model, roles: Sequence[str]) -> Dict[str, Callable[..., Any]]:
    from vgray.evaluate.methods import create_method

    method = create_method(cfg, model.mean, model.std)
    return {
        "database": method.database_transform,
        "queries": method.query_transforms[0] if "queries" in roles else method.database_transform,
    }


def _default_actors(ray) -> tuple:
    """``(actors, gpus_per_actor)``: one actor per GPU, else half the CPUs (the rest decode)."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        return gpus, 1
    return max(1, int(res.get("CPU", 1)) // 2), 0


def default_plan(ray, actors: Optional[int]) -> Dict[str, float]:
    """Actors and per-stage resources outside a placement group: one actor per GPU, else half the
    CPUs; decode tasks on 1 CPU. CPU actors never reserve the CPUs decoding needs (the pipeline
    would wait forever): where there are more CPU actors than whole CPUs to spare, every CPU is cut
    into slots of ``1/m`` (the fewest that leave one slot free), each actor and each decode task
    takes one. Slots that divide a CPU cannot leave a node with a gap smaller than a decode task,
    so the free slot lies whole on some node, however the actors are spread over a cluster's nodes
    (fractions such as 0.67 could be scattered as 0.33 on two nodes: no node could decode)."""
    default, gpus = _default_actors(ray)
    n = actors or default
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    decode = 1.0 if cpus >= 2 else cpus / 2
    if gpus:
        return {"actors": n, "actor_cpus": 0, "actor_gpus": gpus, "decode_cpus": decode}
    if cpus - decode >= n:
        return {"actors": n, "actor_cpus": 1.0, "actor_gpus": 0, "decode_cpus": decode}
    slot = 1.0 / math.ceil((n + 1) / max(cpus, 1.0))
    return {"actors": n, "actor_cpus": slot, "actor_gpus": 0, "decode_cpus": slot}


def check_request(cfg, roles: Sequence[str], shard_size: int, actors: Optional[int]) -> tuple:
    """The refusals made before Ray starts; returns ``roles`` as a tuple."""
    if shard_size < 1:
        raise BadInput(f"--shard-size={shard_size} must be at least 1")
    if actors is not None and actors < 1:
        raise BadInput(f"--actors={actors} must be at least 1")
    roles = tuple(roles)
    for role in roles:
        if role not in ROLES:
            raise BadInput(f"role {role!r}: allowed are {', '.join(ROLES)}")
    if cfg.model.pca_dim is not None:
        raise BadInput(
            "model.pca_dim: vgray extract writes the network's descriptors, before PCA; "
            "unset it (or use vgray eval --save-descriptors)"
        )
    if "queries" in roles:
        from vgray.evaluate.methods import create_method

        method = create_method(cfg, (0.0,) * 3, (1.0,) * 3)  # only its crops matter here
        if method.crops != 1 or not method.batched:
            raise BadInput(
                f"test.method={cfg.test.method}: vgray extract writes one descriptor per query image; "
                f"use hard_resize or central_crop (or extract --role database only)"
            )
    return roles


@dataclass
class Prepared:
    """What :func:`extract` checks and builds before Ray starts (:func:`prepare`): the roles, the
    split, the network and its :func:`model_hash`, and whether the network was built now (then its
    ``model.pt`` and ``config.yaml`` are written once Ray is up)."""

    roles: tuple
    split: Split
    model: GeoLocalizationNet
    model_sha1: str
    fresh: bool


def prepare(
    cfg,
    split_name: str,
    out_dir,
    roles: Sequence[str] = ROLES,
    shard_size: int = 1000,
    actors: Optional[int] = None,
    progress: bool = True,
    index: Optional[str] = None,
    split=None,
    concat: bool = False,
) -> Prepared:
    """Every check of an extraction and its network, before Ray starts and before anything is
    written: the request (:func:`check_request`), the split (``split``, when the caller has
    opened it already), the model built (its weights loaded, NetVLAD initialised) or the
    folder's own ``model.pt`` read back, the ``index`` string."""
    from vgray.data.dataset import open_split

    roles = check_request(cfg, roles, shard_size, actors)
    if split is None:
        split = open_split(cfg.data.root, split_name, cfg.data.msls_queries)
    model, model_sha1, fresh = _prepare_model(cfg, split, Path(out_dir), progress)
    if index is not None:
        from vgray.evaluate.knn import build_index

        if "database" not in roles:
            raise BadInput(f"--index {index}: an index is made of the database; extract --role database too")
        build_index(index, model.features_dim)  # a string faiss refuses stops us before any extraction
    check_room_for_shards(Path(out_dir), [len(getattr(split, role)) for role in roles], model.features_dim, concat)
    return Prepared(roles, split, model, model_sha1, fresh)


ROW_OVERHEAD = 160  # bytes a shard row takes besides its descriptor: the path, two float64, parquet's framing


def check_room_for_shards(out: Path, images: Sequence[int], d: int, concat: bool) -> None:
    """BadInput before anything is written when ``out``'s disk cannot hold the shards of
    ``images`` (per role) of ``d``-dimensional descriptors (twice, with ``concat``'s joined files),
    less the shard files already there (kept, or written over)."""
    from vgray.paths import check_room

    need = sum(images) * (4 * d + ROW_OVERHEAD) * (2 if concat else 1)
    have = sum(f.stat().st_size for f in out.glob("*/shard-*.parquet")) if out.is_dir() else 0
    what = f"the descriptors of {sum(images):,} images ({d} dimensions)"
    check_room(out, need - have, "--out" if concat else "the shards' folder", what)


def extract(
    cfg,
    split_name: str,
    out_dir,
    roles: Sequence[str] = ROLES,
    shard_size: int = 1000,
    actors: Optional[int] = None,
    batch_size: Optional[int] = None,
    progress: bool = True,
    concat: bool = True,
    log=None,
    index: Optional[str] = None,
    prepared: Optional[Prepared] = None,
) -> Dict[str, object]:
    """Descriptors of ``roles`` of split ``split_name`` of ``cfg.data.root`` into ``out_dir``.

    With ``concat``, the shards of each role are also joined into ``out_dir/<role>.parquet`` (what
    ``vgray locate --database out_dir`` reads; one more pass over the descriptors on the driver).
    With ``index`` (a faiss index_factory string, e.g. ``IVF1024,PQ32``), the database shards are
    also made into that index, trained on a sample and filled shard by shard
    (:func:`vgray.distributed.search.index_from_shards`), written to ``out_dir/database.index.faiss``.
    Ray must be initialised (``vgray.distributed.sweep.init_ray``); ``prepared`` is what
    :func:`prepare` returned for these same arguments before Ray started (made here when None). Returns figures:
    ``images`` (extracted now), ``shards_written``, ``shards_kept``, ``skipped`` (unreadable
    images left out), ``features_dim``, ``model_sha1``, ``seconds``, ``images_per_s``.
    """
    import ray

    from vgray.saved_descriptors import write_model

    log = log or (lambda msg: print(f"vgray: {msg}", file=sys.stderr))
    if not ray.is_initialized():
        check_request(cfg, roles, shard_size, actors)
        raise BadInput("vgray extract needs Ray: call vgray.distributed.sweep.init_ray first")
    start_time = time.perf_counter()
    if prepared is None:
        prepared = prepare(cfg, split_name, out_dir, roles, shard_size, actors, progress, index, concat=concat)
    roles, split, model, model_sha1 = prepared.roles, prepared.split, prepared.model, prepared.model_sha1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if prepared.fresh:
        write_model(out, cfg, model)
    d = model.features_dim
    transforms = _transforms(cfg, model, roles)
    sets = {role: getattr(split, role) for role in roles}

    def expected(sh: Shard) -> Dict:
        return {
            "model_sha1": model_sha1,
            "features_dim": d,
            "role": sh.role,
            "start": sh.start,
            "stop": sh.stop,
            "paths_sha1": paths_sha1(sets[sh.role].paths[sh.start : sh.stop]),
        }

    pending: List[Shard] = []
    kept = 0
    for role in roles:
        n = len(sets[role])
        for k, s in enumerate(range(0, n, shard_size)):
            sh = Shard(role, k, s, min(s + shard_size, n))
            problem = shard_problem(shard_path(out, role, k), expected(sh))
            if problem is None:
                kept += 1
                continue
            if problem != "missing":
                log(f"shard {shard_path(out, role, k)} {problem}: extracting it again")
            pending.append(sh)
        # Shards beyond this split's size (a smaller dataset, a larger --shard-size) would mix in.
        k = -(-n // shard_size)
        while shard_path(out, role, k).exists():
            log(f"removing {shard_path(out, role, k)}: beyond the {n} {role} images")
            shard_path(out, role, k).unlink()
            k += 1

    written = skipped = extracted = 0
    if pending:
        written, skipped, extracted = _run(
            cfg, out, pending, sets, transforms, d, expected, actors, batch_size, progress, log
        )
    for role in roles if concat else ():
        _concat_shards(
            [shard_path(out, role, k) for k in range(-(-len(sets[role]) // shard_size))], out / f"{role}.parquet"
        )
    figures = {} if index is None else _write_index(out, len(sets["database"]), shard_size, index, cfg.seed)
    seconds = time.perf_counter() - start_time
    return {
        **figures,
        "images": extracted,
        "shards_written": written,
        "shards_kept": kept,
        "skipped": skipped,
        "features_dim": d,
        "model_sha1": model_sha1,
        "seconds": seconds,
        "images_per_s": extracted / seconds if seconds > 0 else 0.0,
    }


def _concat_shards(shards: Sequence[Path], path: Path) -> None:
    """The ``shards`` joined into ``path`` (atomically), one shard in memory at a time."""
    with atomic_path(path) as tmp:
        writer: Optional[pq.ParquetWriter] = None
        try:
            for shard in shards:
                table = pq.read_table(shard).replace_schema_metadata(None)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()


def _write_index(out: Path, database: int, shard_size: int, index: str, seed: int) -> Dict[str, object]:
    """The ``database`` images' shards in ``out`` made into the faiss index ``index`` (trained on a
    sample, filled shard by shard), written atomically to ``out/database.index.faiss``; its figures."""
    import faiss

    from vgray.atomic import atomic_path
    from vgray.distributed.search import index_from_shards

    started = time.perf_counter()
    files = [shard_path(out, "database", k) for k in range(-(-database // shard_size))]
    built = index_from_shards([str(f) for f in files], index, seed=seed)
    with atomic_path(out / INDEX_FILE) as tmp:
        faiss.write_index(built, str(tmp))
    return {
        "index": index,
        "index_seconds": time.perf_counter() - started,
        "index_mb": (out / INDEX_FILE).stat().st_size / 2**20,
    }


def _run(
    cfg, out: Path, pending: List[Shard], sets, transforms, d: int, expected, actors, batch_size, progress: bool, log
):
    """Extract the ``pending`` shards through Ray Data; returns (written, skipped, images). The
    driver holds the work as Arrow blocks (no Python object per image) and, for each shard still
    in flight, one array of its descriptors: what it holds does not grow with the dataset."""
    import ray

    from vgray.data.images import unreadable
    from vgray.saved_descriptors import MODEL_FILE, descriptor_table

    batch_size = batch_size or cfg.test.batch_size
    rows = block_rows(sum(sh.stop - sh.start for sh in pending), batch_size)
    blocks = work_blocks([(sh.role, sets[sh.role].paths, sh.start, sh.stop) for sh in pending], rows)
    ds = pipeline(
        cfg, blocks, transforms, {"model_file": str(out / MODEL_FILE)}, default_plan(ray, actors), batch_size, progress
    )
    del blocks  # in the object store now
    starts = {role: sorted(sh.start for sh in pending if sh.role == role) for role in {sh.role for sh in pending}}
    by_start = {(sh.role, sh.start): sh for sh in pending}
    open_shards: Dict[Shard, Tuple[np.ndarray, np.ndarray]] = {}  # shard -> (descriptors, read mask)
    filled: Dict[Shard, int] = {}
    written = skipped = images = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for role, index, desc, error in zip(batch["role"], batch["index"], batch["descriptor"], batch["error"]):
            role, index = str(role), int(index)
            sh = by_start[(role, starts[role][bisect.bisect_right(starts[role], index) - 1])]
            if sh not in open_shards:
                open_shards[sh] = (np.zeros((sh.stop - sh.start, d), np.float32), np.zeros(sh.stop - sh.start, bool))
            xb, ok = open_shards[sh]
            if error:
                unreadable(sets[role].paths[index], error, cfg.data.skip_corrupt, log)
                skipped += 1
            else:
                xb[index - sh.start], ok[index - sh.start] = desc, True
            filled[sh] = filled.get(sh, 0) + 1
            if filled[sh] == sh.stop - sh.start:
                del open_shards[sh], filled[sh]
                rows_ok = np.flatnonzero(ok).astype(np.int64) + sh.start
                table = descriptor_table(sets[role], rows_ok, xb[ok])
                meta = {**expected(sh), "count": int(len(rows_ok)), "skipped": int(sh.stop - sh.start - len(rows_ok))}
                table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
                _write_atomic(table, shard_path(out, role, sh.k))
                written += 1
                images += len(rows_ok)
    if open_shards:  # cannot happen unless Ray dropped rows; never leave a partial shard
        raise RuntimeError(f"{len(open_shards)} shard(s) incomplete after extraction")
    return written, skipped, images
