"""The kNN index study and PCA: every index family through evaluation on tiny, the refusals
(PQ sizes, strings faiss rejects, PCA without training images), PCA end to end with pca.faiss
saved and reloaded, vgray bench knn, and the Fig. 4b sweep file."""

import json
import re
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY, TINY_SET, make_vg_folder

from vgray.cli import main
from vgray.config import load_config
from vgray.data.dataset import open_split
from vgray.distributed.spec import load_sweep
from vgray.errors import BadInput
from vgray.evaluate.evaluate import evaluate, evaluate_split
from vgray.evaluate.extract import extract_descriptors
from vgray.evaluate.knn import build_index, default_nprobe, fill_index
from vgray.evaluate.pca import apply_pca, fit_pca
from vgray.models import build_model
from vgray.runtime import Runtime
from vgray.saved_descriptors import load_pca, save_pca
from vgray.seeding import seed_everything

ROOT = Path(__file__).resolve().parent.parent
BASE = [*TINY_SET, "data.resize=[32,48]", "test.split=val", "model.aggregation=gem", "test.recall_values=[1,5,10]"]
# One of each family of the paper's Fig. 4b, plus PCA/OPQ prefixes; 4-bit PQ codebooks, as tiny's
# val database (252 images) is smaller than the 256 centroids of 8-bit ones.
# (OPQ trains 8-bit codebooks whatever the PQ after it: test_search_defaults trains one.)
INDEXES = ["Flat", "IVF16,Flat", "PQ16x4", "IVF16,PQ16x4", "IMI2x3,PQ16x4", "HNSW16", "PCAR64,IVF8,PQ8x4", "PCA64,Flat"]


def cfg_of(*extra, root=TINY):
    return load_config(overrides=[f"data.root={root}", *BASE, *extra])


class CachedExtractor:
    """The injectable extractor: real descriptors, extracted once per image set and reused."""

    def __init__(self):
        self.cache = {}

    def __call__(self, model, paths, transform, rt, features_dim, desc):
        key = (desc, tuple(paths))
        if key not in self.cache:
            self.cache[key] = extract_descriptors(model, paths, transform, rt, features_dim, desc)
        return self.cache[key]


@pytest.fixture(scope="module")
def tiny_model():
    seed_everything(0)
    return build_model(cfg_of().model)


@pytest.fixture(scope="module")
def extractor():
    return CachedExtractor()


def test_every_index_family_runs_on_tiny(tiny_model, extractor):
    split = open_split(TINY, "val")
    results = {}
    for spec in INDEXES:
        cfg = cfg_of(f"test.knn={spec}")
        results[spec] = evaluate_split(
            tiny_model, split, cfg, rt=Runtime.from_config(cfg, progress=False), extractor=extractor
        )
    flat = results["Flat"]
    for spec, r in results.items():
        assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100, spec
        assert r["matching_ms"] > 0 and r["index_memory_mb"] > 0 and r["features_dim"] == 256, spec
    assert flat["index_memory_mb"] == pytest.approx(252 * 256 * 4 / 2**20)
    for spec in ("PQ16x4", "IVF16,PQ16x4", "IMI2x3,PQ16x4"):
        assert results[spec]["index_memory_mb"] < flat["index_memory_mb"] / 2, spec  # compressed codes
    # HNSW with efSearch 128 on 252 images, and IVF visiting 8 of 16 lists, stay near exhaustive search.
    assert results["HNSW16"]["R@10"] >= flat["R@10"] - 5
    assert results["IVF16,Flat"]["R@10"] >= flat["R@10"] - 15


def test_search_defaults():
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(3000, 16)).astype(np.float32)
    for spec, nprobe in (("IVF64,Flat", 8), ("IVF1024,Flat", 64), ("PCA8,IVF16,Flat", 8), ("IVF4,Flat", 4)):
        index = build_index(spec, 16)
        fill_index(index, xb)
        assert faiss.extract_index_ivf(index).nprobe == nprobe == default_nprobe(faiss.extract_index_ivf(index).nlist)
    opq = build_index("OPQ4_16,IVF4,PQ4x4", 16)  # OPQ's own codebooks need 256 training vectors
    fill_index(opq, xb[:300])
    D, I = opq.search(xb[:5], 3)
    assert faiss.extract_index_ivf(opq).nprobe == 4 and (I >= 0).all()
    hnsw = build_index("HNSW8", 16)
    fill_index(hnsw, xb)
    assert faiss.downcast_index(hnsw).hnsw.efSearch == 128
    assert default_nprobe(2**16) == 256


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "PQ7",
            "test.knn='PQ7': a PQ code of 7 sub-vectors needs m dividing the 256-d descriptors it encodes; "
            "allowed m: 1, 2, 4, 8, 16, 32, 64, 128, 256",
        ),
        ("PCA64,IVF8,PQ12", "needs m dividing the 64-d descriptors it encodes; allowed m: 1, 2, 4, 8, 16, 32, 64"),
        ("OPQ7_64,PQ8", "OPQ7_64 splits 64-d vectors into 7 sub-vectors"),
        (
            "Bogus42",
            "test.knn='Bogus42' is refused by faiss for 256-d descriptors: could not parse index string Bogus42",
        ),
        ("PCA512,Flat", "PCA512 cannot make 512-d vectors out of 256-d descriptors"),
    ],
)
def test_bad_index_strings_exit_2_with_one_line_before_extraction(spec, message, capsys, monkeypatch):
    import vgray.evaluate.evaluate as ev

    monkeypatch.setattr(ev, "extract_descriptors", None)  # any extraction would fail loudly instead
    code = main(["eval", "--set", f"data.root={TINY}", *(f"--set={s}" for s in BASE), "--set", f"test.knn={spec}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_training_refuses_a_bad_index_before_it_trains(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *(f"--set={s}" for s in BASE), "--set", "test.knn=IVF16,PQ5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "allowed m: 1, 2, 4, 8, 16" in err and len(err.strip().splitlines()) == 1
    assert not (out / "last.pt").exists()


def test_fit_pca_is_the_principal_components():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 12)) * np.linspace(3, 0.1, 12)).astype(np.float32)
    pca = fit_pca(x, 4)
    y = apply_pca(pca, x)
    assert y.dtype == np.float32 and y.shape == (500, 4)
    centred = x.astype(np.float64) - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    ref = centred @ vt[:4].T
    assert np.allclose(np.abs(y), np.abs(ref), atol=1e-3)  # the same projection, up to signs
    assert not np.allclose(np.linalg.norm(y, axis=1), 1.0)  # not re-normalised, as the paper's code
    with pytest.raises(BadInput, match="model.pca_dim=12 must be smaller than the descriptor size 12"):
        fit_pca(x, 12)


def test_pca_end_to_end_saved_and_reloaded(tiny_model, extractor, tmp_path):
    out = tmp_path / "desc"
    cfg = cfg_of("model.pca_dim=16", "test.knn=HNSW16")
    split = open_split(TINY, "val")
    rt = Runtime.from_config(cfg, progress=False)
    result = evaluate_split(tiny_model, split, cfg, rt=rt, save_descriptors=out, extractor=extractor)
    assert result["features_dim"] == 16 and 0 <= result["R@1"] <= 100
    db = pq.read_table(out / "database.parquet")
    xb = np.stack(db.column("descriptor").to_numpy(zero_copy_only=False)).astype(np.float32)
    assert xb.shape == (252, 16)
    # The saved PCA turns the network's own descriptors into the saved ones.
    pca = load_pca(out / "pca.faiss")
    assert (pca.d_in, pca.d_out) == (256, 16)
    from vgray.evaluate.methods import create_method

    transform = create_method(cfg, tiny_model.mean, tiny_model.std).database_transform
    raw, _ = extract_descriptors(tiny_model, split.database.paths, transform, rt, 256)
    assert np.allclose(apply_pca(pca, raw), xb, atol=1e-4)
    save_pca(pca, tmp_path / "again.faiss")
    assert np.array_equal(apply_pca(load_pca(tmp_path / "again.faiss"), raw), apply_pca(pca, raw))
    # Fitted on the train split, not on the database being searched: another set of images.
    train = open_split(TINY, "train").database.paths
    assert not set(train) & set(split.database.paths)


def test_streamed_database_with_pca_and_crops_gives_the_same_recalls(tiny_model, extractor):
    split = open_split(TINY, "val")
    results = []
    for budget in ([], ["test.memory_budget_mb=0.003"]):  # 0.003 MB: 49 database descriptors a chunk
        cfg = cfg_of("model.pca_dim=16", "test.method=maj_voting", *budget)
        results.append(
            evaluate_split(tiny_model, split, cfg, rt=Runtime.from_config(cfg, progress=False), extractor=extractor)
        )
    whole, streamed = results
    assert {k: whole[k] for k in ("R@1", "R@5", "R@10")} == {k: streamed[k] for k in ("R@1", "R@5", "R@10")}
    assert streamed["index_memory_mb"] < whole["index_memory_mb"]


def test_pca_refusals(tmp_path, capsys):
    db = [(500000.0 + 10 * i, 4100000.0) for i in range(12)]
    q = [(500003.0, 4100001.0)]
    only_test = make_vg_folder(tmp_path / "only_test", db, q)
    small_train = make_vg_folder(make_vg_folder(tmp_path / "small", db, q), db, q, split="train")
    for root, pca_dim, message in (
        (TINY, 256, "model.pca_dim=256 must be smaller than the network's descriptor size 256"),
        (only_test, 8, "model.pca_dim=8 fits the PCA on training images, but the dataset"),
        (small_train, 16, "model.pca_dim=16 needs at least 16 training images to fit the PCA"),
    ):
        code = main(
            [
                "eval",
                "--set",
                f"data.root={root}",
                *(f"--set={s}" for s in BASE),
                "--set",
                "test.split=test",
                "--set",
                f"model.pca_dim={pca_dim}",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    with pytest.raises(BadInput, match="PCA file .*missing.faiss does not exist"):
        load_pca(tmp_path / "missing.faiss")


@pytest.mark.slow
def test_bench_knn_runs_on_synthetic_and_saved_descriptors(tiny_model, tmp_path, capsys):
    figures = tmp_path / "knn.json"
    assert (
        main(
            [
                "bench",
                "knn",
                "--database",
                "600",
                "--queries",
                "40",
                "--dim",
                "32",
                "--repeats",
                "1",
                "--json",
                str(figures),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ratio") and lines[-2].startswith("ratio_index")
    data = json.loads(figures.read_text())
    families = ("Flat", "IVF128,Flat", "PQ4", "IVF128,PQ4", "IMI2x5,PQ4", "HNSW32")
    for spec in families:
        assert {
            f"{spec} R@1",
            f"{spec} matching_ms",
            f"{spec} memory_mb",
            f"{spec} speedup_vs_flat",
            f"{spec} memory_vs_flat",
            f"{spec} R@1_vs_flat",
        } <= set(data), spec
    assert data["Flat speedup_vs_flat"] == 1.0 and data["PQ4 memory_vs_flat"] < 0.5
    assert 20 < data["Flat R@1"] < 100  # a real retrieval task: neither trivial nor hopeless
    # On descriptors saved by vgray eval, with its own index list.
    out = tmp_path / "desc"
    evaluate(cfg_of(), save_descriptors=out, progress=False, model=tiny_model)
    assert main(["bench", "knn", "--descriptors", str(out), "--index", "HNSW16", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^database\s+252$", text, re.M) and re.search(r"^dim\s+256$", text, re.M)
    assert "HNSW16 speedup_vs_flat" in text and "Flat R@1" in text
    assert main(["bench", "knn", "--index", "PQ7", "--dim", "32", "--database", "300"]) == 2
    assert "allowed m" in capsys.readouterr().err


def test_fig4_sweep_expands_to_every_index_family(monkeypatch, capsys):
    monkeypatch.setenv("VGRAY_DATASETS", "/datasets")
    path = ROOT / "sweeps" / "fig4_knn.yaml"
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("sweep fig4_knn: 6 trials (eval)")
    spec = load_sweep(path)
    knn = [t.overrides["test.knn"] for t in spec.trials()]
    assert knn == ["Flat", "IVF1024,Flat", "PQ64", "IVF1024,PQ64", "IMI2x8,PQ64", "HNSW32"]
    cfg = spec.trials()[0].config(spec, 0)
    assert (cfg.model.backbone, cfg.model.aggregation) == ("resnet50conv4", "gem")
    for spec_string in knn:  # each one valid for ResNet-50 conv4 + GeM's 1024-d descriptors
        build_index(spec_string, 1024)


@pytest.mark.slow
def test_training_tests_with_pca_and_the_index_validation_does_not(tmp_path):
    """The final test of a training run applies model.pca_dim (fitted on its train split) and
    test.knn; validation stays the paper's (hard_resize, exact search, full descriptors)."""
    from vgray.train.loop import train

    cfg = load_config(
        overrides=[
            f"data.root={TINY}",
            *TINY_SET,
            "data.resize=[32,48]",
            "model.aggregation=gem",
            "train.queries_per_epoch=10",
            "train.cache_refresh_rate=10",
            "train.negs_num_per_query=2",
            "train.neg_samples_num=40",
            "train.epochs=1",
            "test.recall_values=[1,5]",
            "model.pca_dim=32",
            "test.knn=IVF16,PQ8",
            "test.method=nearest_crop",
        ]
    )
    result = train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert result["features_dim"] == 32 and 0 <= result["test/synthetic_tiny/R@1"] <= 100
    assert result["index_memory_mb"] < 920 * 32 * 4 / 2**20  # PQ codes of the 32-d projections
    assert {"val/R@1", "val/R@5"} <= set(result) and result["epochs"] == 1
