"""Sweep files without Ray: expansion, the dry-run counts of sweeps/, the results store and its
summary (mean and std recomputed here), and the bad sweep files."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from vgray.cli import main
from vgray.distributed.results import ResultsStore
from vgray.distributed.spec import GRID_KEY, decode_trial, dry_run_table, load_sweep, param_space, parse_sweep
from vgray.errors import BadInput
from vgray.results import summarize, summary_markdown

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {
    "quickstart": 4,
    "table3_backbones": 48,
    "table6_mining": 18,
    "table6_mining_msls": 18,
    "fig2_augmentation_optuna": 20,
    "fig3_resize": 24,
    "table4_aggregation": 60,
    "table5_transformers": 36,
    "fig4_knn": 6,
    "modern_heads": 27,
    "released_models": 14,
    "data_parallel": 12,
}

TINY_BASE = {
    "data": {"root": "synthetic:tiny", "resize": [32, 48], "num_workers": 0},
    "model": {"pretrained": "none", "aggregation": "gem"},
    "train": {
        "queries_per_epoch": 10,
        "cache_refresh_rate": 10,
        "negs_num_per_query": 2,
        "neg_samples_num": 40,
        "epochs": 1,
    },
    "test": {"recall_values": [1, 5]},
}


def sweep_files():
    return sorted(p for p in (ROOT / "sweeps").glob("*.yaml") if not p.name.startswith("_"))


def test_every_sweep_file_expands_to_the_papers_combinations(monkeypatch, capsys):
    monkeypatch.setenv("VGRAY_DATASETS", "/datasets")
    assert {p.stem for p in sweep_files()} == set(EXPECTED)
    for path in sweep_files():
        assert main(["sweep", str(path), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"sweep {path.stem}: {EXPECTED[path.stem]} trials"), out
        spec = load_sweep(path)
        if not spec.search:
            assert len(spec.trials()) == EXPECTED[path.stem]
            assert len({t.name for t in spec.trials()}) == EXPECTED[path.stem]  # names say the config


def test_table3_covers_every_backbone_and_aggregation(monkeypatch):
    monkeypatch.setenv("VGRAY_DATASETS", "/datasets")
    spec = load_sweep(ROOT / "sweeps" / "table3_backbones.yaml")
    combos = {(t.overrides["model.backbone"], t.overrides["model.aggregation"]) for t in spec.trials()}
    assert combos == {
        (b, a) for b in ("vgg16", "resnet18conv4", "resnet50conv4", "resnet101conv4") for a in ("gem", "netvlad")
    }
    cfg = spec.trials()[0].config(spec, 0)
    assert cfg.test.datasets["tokyo247"] == "/datasets/tokyo247" and cfg.train.lr == 1e-5


def test_modern_heads_covers_the_issues_pairs_with_place_batched_training(monkeypatch):
    monkeypatch.setenv("VGRAY_DATASETS", "/datasets")
    spec = load_sweep(ROOT / "sweeps" / "modern_heads.yaml")
    pairs = {(t.overrides["model.backbone"], t.overrides["model.aggregation"]) for t in spec.trials()}
    assert pairs == {
        *(("dinov2_vitb14", a) for a in ("salad", "boq", "mixvpr", "gem", "netvlad")),
        *(("resnet50conv4", a) for a in ("mixvpr", "boq", "convap", "gem")),
    }
    for trial in spec.trials():
        cfg = trial.config(spec, 0)  # validated: sizes multiples of 14, MixVPR's map, places regime
        assert cfg.train.regime == "places" and cfg.data.layout == "gsv_cities"
        assert cfg.data.image_size == ((322, 322) if cfg.model.backbone.startswith("dinov2") else (320, 320))
        assert set(cfg.test.datasets) == {"pitts30k", "msls", "tokyo247", "nordland"}
        if cfg.model.aggregation == "gem":  # the raw map pooled, an FC after (the README's reasons)
            assert cfg.model.l2 == "none" and cfg.model.fc_output_dim is not None


def test_table4_and_table5_cover_the_papers_rows(monkeypatch):
    monkeypatch.setenv("VGRAY_DATASETS", "/datasets")
    spec = load_sweep(ROOT / "sweeps" / "table4_aggregation.yaml")
    rows4 = {
        (t.overrides["model.aggregation"], t.overrides.get("model.fc_output_dim"), t.overrides.get("model.pca_dim"))
        for t in spec.trials()
    }
    assert rows4 == {
        ("spoc", None, None),
        ("mac", None, None),
        ("rmac", None, None),
        ("rrm", None, None),
        ("gem", None, None),
        ("gem", 2048, None),
        ("gem", 65536, None),
        ("netvlad", None, None),
        ("netvlad", None, 2048),
        ("crn", None, None),
    }
    crn = [t for t in spec.trials() if t.overrides["model.aggregation"] == "crn"]
    assert crn and all(t.after == t.name.replace("crn-from=netvlad", "netvlad") for t in crn)
    assert spec.stages()[1] == crn  # CRN waits for the NetVLAD models
    spec = load_sweep(ROOT / "sweeps" / "table5_transformers.yaml")
    rows5 = {(t.overrides["model.backbone"], t.overrides["model.aggregation"]) for t in spec.trials()}
    assert {("vit", "cls"), ("cct384", "cls"), ("cct384", "seqpool"), ("cct384", "netvlad")} <= rows5
    assert {
        tuple(t.config(spec, 0).data.image_size) for t in spec.trials() if t.overrides["model.backbone"] == "vit"
    } == {(224, 224)}


def test_expansion_grid_times_seeds():
    spec = parse_sweep(
        {
            "name": "x",
            "base": TINY_BASE,
            "grid": {"model.aggregation": ["gem", "netvlad"], "train.lr": [0.001, 0.0001]},
            "repeats": 3,
        }
    )
    trials = spec.trials()
    assert len(trials) == 12 and spec.num_trials == 12
    assert trials[0].name == "gem-lr=0.001-s0" and trials[0].seeds == [0]
    assert {t.seeds[0] for t in trials} == {0, 1, 2}
    cfg = trials[5].config(spec, trials[5].seeds[0])
    assert cfg.model.aggregation == "gem" and cfg.train.lr == 0.0001 and cfg.seed == 2
    assert "gem-lr=0.0001-s2" in dry_run_table(spec)
    # the seed is not part of the config key: repeated runs share it
    assert trials[3].config(spec, 0).key() == trials[4].config(spec, 1).key()


def test_variants_cross_the_grid_and_set_keys_together():
    spec = parse_sweep(
        {
            "name": "x",
            "base": TINY_BASE,
            "grid": {"model.backbone": ["resnet18conv4", "alexnet"]},
            "variants": [
                {"model.aggregation": "gem"},
                {"model.aggregation": "gem", "model.fc_output_dim": 64},
                {"model.aggregation": "netvlad", "model.netvlad_clusters": 8},
            ],
            "repeats": 2,
        }
    )
    trials = spec.trials()
    assert len(trials) == 2 * 3 * 2 and len({t.name for t in trials}) == 12
    assert spec.varied == ["model.backbone", "model.aggregation", "model.fc_output_dim", "model.netvlad_clusters"]
    fc = [t for t in trials if t.overrides.get("model.fc_output_dim") == 64]
    assert len(fc) == 4 and all(t.overrides["model.aggregation"] == "gem" for t in fc)
    cfg = fc[0].config(spec, 0)
    assert cfg.model.fc_output_dim == 64 and cfg.model.netvlad_clusters == 64  # untouched keys keep the base
    table = dry_run_table(spec)
    assert "fc_output_dim" in table.splitlines()[1] and "resnet18conv4-gem-fc_output_dim=64-s1" in table


BAD = [
    ({"name": "x", "variants": [{"model.aggregation": "gem"}, {"model.aggregation": "gem"}]}, "variants repeat"),
    ({"name": "x", "variants": [{}]}, "variants[0] is empty"),
    (
        {"name": "x", "variants": [{"model.aggregation": "gem"}, {"model.resume_from": "trial:netvlad"}]},
        "model.resume_from=trial:netvlad names no trial of this sweep that trains from scratch; allowed: trial:gem",
    ),
    ({"name": "x", "variants": [{"model.agregation": "gem"}]}, "variants[0] key 'model.agregation' is unknown"),
    (
        {"name": "x", "grid": {"model.aggregation": ["gem"]}, "variants": [{"model.aggregation": "netvlad"}]},
        "which the grid varies too",
    ),
    ({"name": "x", "gird": {}}, "key 'gird' is unknown; did you mean grid"),
    (
        {"name": "x", "grid": {"model.bakbone": ["vgg16"]}},
        "grid key 'model.bakbone' is unknown; did you mean model.backbone",
    ),
    ({"name": "x", "grid": {}}, "grid is empty"),
    ({"name": "x", "grid": {"model.backbone": []}}, "non-empty list"),
    ({"name": "x", "repeats": -1}, "repeats=-1 must lie in [1, 1000]"),
    (
        {"name": "x", "grid": {"model.l2": ["before_pool", "sideways"]}},
        "trial l2=sideways-s0: model.l2='sideways' is not allowed",
    ),
    (
        {"name": "x", "search": {"space": {"train.lrr": {"type": "float", "low": 0, "high": 1}}}},
        "search space key 'train.lrr'",
    ),
    ({"name": "x", "search": {"space": {"train.lr": {"type": "float", "low": 1, "high": 0}}}}, "low < high"),
    ({"name": "x", "search": {"space": {"train.lr": {"type": "gauss"}}}}, "type='gauss' is not allowed"),
    (
        {"name": "x", "scheduler": {"type": "hyperband"}},
        "scheduler.type='hyperband' is not allowed; choose one of: asha, fifo",
    ),
    (
        {"name": "x", "scheduler": {"type": "asha", "grace": 1}},
        "scheduler key 'grace' is unknown; did you mean grace_period?",
    ),
    ({"name": "x", "task": "eval", "scheduler": {"type": "asha"}}, "task eval has no epochs"),
    (
        {"name": "x", "search": {"sampler": "grid", "space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}}},
        "search.sampler='grid' is not allowed; choose one of: tpe, random",
    ),
    ({"name": "x", "resources": {"tpu": 1}}, "resources key 'tpu' is unknown"),
    ({"name": "x", "resources": {"gpu": -1}}, "resources.gpu=-1.0 must lie in [0, inf]"),
    ({"name": "x y"}, "name='x y' must be a word"),
    ({"name": "x", "grid": {"seed": [0, 1]}}, "use repeats"),
    ({"name": "x", "base": {"model": {"backbone": "resnet7"}}}, "base: model.backbone='resnet7' is not allowed"),
]


@pytest.mark.parametrize("raw,message", BAD)
def test_bad_sweeps_are_refused_before_anything_runs(raw, message, tmp_path, capsys):
    raw = {**raw, "storage": str(tmp_path / "store")}
    if "base" not in raw:
        raw["base"] = TINY_BASE
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "store").exists()  # nothing launched, nothing written


def test_a_second_stage_is_checked_against_its_first_stages_config_without_files(tmp_path, monkeypatch):
    """CRN starting from a NetVLAD trial: checked at parse time against that trial's config, with
    no stand-in checkpoint written anywhere."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = {**TINY_BASE, "model": {**TINY_BASE["model"], "netvlad_clusters": 8}}
    crn = {"model.aggregation": "crn", "model.resume_from": "trial:model.aggregation=netvlad"}
    spec = parse_sweep({"name": "x", "base": base, "repeats": 2, "variants": [{"model.aggregation": "netvlad"}, crn]})
    second = spec.stages()[1]
    assert [t.after for t in second] == ["netvlad-s0", "netvlad-s1"]
    assert second[0].config(spec, 0).model.resume_from == "trial:model.aggregation=netvlad"
    with pytest.raises(
        BadInput,
        match=r"trial crn-from=netvlad-netvlad_clusters=16-s0: model.resume_from=trial:"
        r"model.aggregation=netvlad \(the model of trial netvlad-s0\) has "
        r"model.netvlad_clusters=8 but this config 16",
    ):
        parse_sweep(
            {
                "name": "x",
                "base": base,
                "variants": [{"model.aggregation": "netvlad"}, {**crn, "model.netvlad_clusters": 16}],
            }
        )
    assert list(tmp_path.iterdir()) == []


def test_the_trial_codec_gives_back_each_trials_config():
    """Tune's dict of every grid trial, and of a search trial with numpy-sampled keys, decodes to
    the config the sweep expands."""
    spec = parse_sweep(
        {
            "name": "x",
            "base": TINY_BASE,
            "grid": {"model.aggregation": ["gem", "netvlad"]},
            "repeats": 2,
            "keep_models": True,
        }
    )
    space = param_space(spec, None, grid_search=list, sample=None)
    assert len(space[GRID_KEY]) == 4
    for trial, entry in zip(spec.trials(), space[GRID_KEY]):
        decoded = decode_trial({**space, GRID_KEY: entry})
        assert decoded.label == trial.name and decoded.keep_model and decoded.seeds == trial.seeds
        assert decoded.config(trial.seeds[0]) == trial.config(spec, trial.seeds[0])
    search = parse_sweep(
        {
            "name": "s",
            "base": TINY_BASE,
            "repeats": 2,
            "grid": {"model.aggregation": ["gem"]},
            "search": {
                "space": {
                    "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                    "train.batch_size": {"type": "int", "low": 2, "high": 8},
                }
            },
        }
    )
    space = param_space(search, None, grid_search=None, sample=lambda dim: dim)
    assert set(space) >= {"train.lr", "train.batch_size", "model.aggregation"}
    sampled = {**space, "train.lr": np.float64(1e-4), "train.batch_size": np.int64(4), "model.aggregation": "gem"}
    decoded = decode_trial(sampled)
    cfg = decoded.config(1)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.seed) == (1e-4, 4, 1) and type(cfg.train.batch_size) is int
    assert decoded.seeds == [0, 1] and decoded.label == "gem-lr=0.0001-batch_size=4" and not decoded.keep_model


def test_unwritable_storage_is_refused_before_ray_starts(tmp_path, capsys):
    blocked = tmp_path / "ro"
    blocked.write_text("a file where a folder should be")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "base": TINY_BASE, "storage": str(blocked / "results")}))
    assert main(["sweep", str(path)]) == 2
    assert "ro is a file, not a folder" in capsys.readouterr().err  # the one path door
    import ray

    assert not ray.is_initialized()


def _row(trial, key, seed, r1, status="ok"):
    return {
        "trial_id": trial,
        "trial_name": trial,
        "config_key": key,
        "seed": seed,
        "status": status,
        "error": "" if status == "ok" else "ValueError: boom",
        "model.aggregation": key,
        "test/pitts30k/R@1": r1,
        "test/pitts30k/R@5": r1 + 10,
        "features_dim": 256,
        "gflops": 17.2,
    }


def test_results_store_adds_each_trial_once_and_survives_a_reload(tmp_path):
    store = ResultsStore(tmp_path, varied=["model.aggregation"])
    assert store.add(_row("t1", "gem", 0, 60.0))
    assert not store.add(_row("t1", "gem", 0, 61.0))  # same trial_id: ignored
    assert store.add(_row("t2", "gem", 1, 64.0))
    assert store.add(_row("t3", "netvlad", 0, 70.0, status="failed"))
    assert store.add(_row("t3", "netvlad", 0, 71.0))  # a retry that succeeded replaces the failure
    again = ResultsStore(tmp_path, varied=["model.aggregation"])
    rows = pq.read_table(tmp_path / "results.parquet").to_pylist()
    assert [r["trial_id"] for r in rows] == ["t1", "t2", "t3"] == [r["trial_id"] for r in again.rows]
    assert not again.add(_row("t2", "gem", 1, 0.0))
    summary = {e["config_key"]: e for e in summarize(again.rows, ["model.aggregation"])}
    assert summary["gem"]["n"] == 2
    assert summary["gem"]["test/pitts30k/R@1"] == pytest.approx(np.mean([60.0, 64.0]))
    assert summary["gem"]["test/pitts30k/R@1 std"] == pytest.approx(np.std([60.0, 64.0], ddof=1))
    text = (tmp_path / "summary.md").read_text()
    assert "| gem | 2 | 62.0 ± 2.8 |" in text
    assert "pitts30k/R@1" in text and "features_dim" in text
    assert (tmp_path / "summary.csv").read_text().startswith("model.aggregation,config_key,n,failed,stopped")


def test_failed_trials_show_in_the_summary_with_their_error(tmp_path):
    store = ResultsStore(tmp_path, varied=["model.aggregation"])
    store.add(_row("t1", "gem", 0, 60.0))
    store.add(_row("t2", "netvlad", 0, 0.0, status="failed"))
    text = summary_markdown(store.summary())
    assert "| netvlad | 0 (1 failed) |" in text
    assert "failed: aggregation=netvlad: ValueError: boom" in text.replace("model.aggregation", "aggregation")


def test_results_store_on_a_uri(tmp_path):
    """Storage given as a URI goes through pyarrow's filesystems (s3://, gs://; file:// here)."""
    uri = f"file://{tmp_path}/remote"
    store = ResultsStore(uri, varied=["model.aggregation"])
    assert store.add(_row("t1", "gem", 0, 60.0)) and store.add(_row("t2", "gem", 1, 62.0))
    again = ResultsStore(uri, varied=["model.aggregation"])
    assert [r["trial_id"] for r in again.rows] == ["t1", "t2"] and not again.add(_row("t1", "gem", 0, 1.0))
    assert "| gem | 2 | 61.0 ± 1.4 |" in (tmp_path / "remote" / "summary.md").read_text()


def test_released_models_are_each_release_as_published(monkeypatch):
    """Every trial of released_models.yaml is an eval of a named release whose config is the release's
    (checked as loading checks it, without the files), at the publisher's input size."""
    from vgray.models import build_model
    from vgray.models.pretrained import RECORDS, check_release

    monkeypatch.setenv("VGRAY_DATASETS", "/datasets")
    spec = load_sweep(ROOT / "sweeps" / "released_models.yaml")
    assert spec.task == "eval"
    seen = set()
    for trial in spec.trials():
        cfg = trial.config(spec, 0)
        with torch.device("meta"):
            model = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
        arch = model.backbone.arch
        check_release(cfg.model, arch)
        rec = RECORDS[(arch, cfg.model.pretrained)]
        if rec.input_size and cfg.model.pretrained not in ("cosplace", "eigenplaces", "dinov2"):
            assert tuple(cfg.data.image_size) == tuple(rec.input_size), trial.name
        seen.add((arch, cfg.model.pretrained))
        assert len(cfg.test.datasets) == 6
    releases = {key for key, rec in RECORDS.items() if rec.network}
    assert releases <= seen  # every MixVPR / SALAD / BoQ release
    assert {name for _, name in seen} == {"cosplace", "eigenplaces", "mixvpr", "salad", "boq", "dinov2"}
