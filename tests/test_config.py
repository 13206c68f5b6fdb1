"""The config: defaults of the paper, YAML and --set layering, type and range checks, cross-checks."""

import dataclasses

import pytest

from vgray.config import Config, all_keys, help_text, load_config
from vgray.errors import BadInput


def test_defaults_are_the_papers_protocol():
    cfg = load_config()
    assert cfg.data.resize == [480, 640]
    assert (cfg.model.backbone, cfg.model.aggregation, cfg.model.netvlad_clusters) == ("resnet18conv4", "netvlad", 64)
    assert (cfg.train.mining, cfg.train.criterion, cfg.train.margin, cfg.train.lr) == ("partial", "triplet", 0.1, 1e-5)
    assert (cfg.train.negs_num_per_query, cfg.train.queries_per_epoch, cfg.train.cache_refresh_rate) == (10, 5000, 1000)
    assert cfg.test.recall_values == [1, 5, 10, 20] and cfg.test.positive_dist_threshold == 25.0
    assert cfg.test.knn == "Flat" and cfg.test.method == "hard_resize" and cfg.seed == 0


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbone: vgg16\n  aggregation: gem\ndata:\n  resize: [240, 320]\n")
    cfg = load_config(path, ["data.resize=[120,160]", "test.recall_values=[1,5]", "model.fc_output_dim=128"])
    assert cfg.model.backbone == "vgg16" and cfg.model.aggregation == "gem"
    assert cfg.data.resize == [120, 160] and cfg.test.recall_values == [1, 5]
    assert cfg.model.fc_output_dim == 128
    assert load_config(overrides=["data.resize_fraction=0.5"]).data.image_size == (240, 320)


def test_environment_variables_expand(monkeypatch):
    monkeypatch.setenv("VGRAY_DATASETS", "/data/vg")
    assert load_config(overrides=["data.root=${VGRAY_DATASETS}/pitts30k"]).data.root == "/data/vg/pitts30k"
    monkeypatch.delenv("VGRAY_DATASETS")
    with pytest.raises(BadInput, match="VGRAY_DATASETS"):
        load_config(overrides=["data.root=${VGRAY_DATASETS}/pitts30k"])


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.bakbone=vgg16", "unknown config key 'model.bakbone'; did you mean model.backbone"),
        ("modle.backbone=vgg16", "unknown config key 'modle.backbone'"),
        ("data.resize=[0,320]", "data.resize=\\[0, 320\\] must lie in \\[1, 16384\\]"),
        ("data.resize=[240]", "must have 2 values"),
        ("data.resize=big", "must be a list"),
        ("test.positive_dist_threshold=-5", "test.positive_dist_threshold=-5.0 must be positive"),
        ("test.positive_dist_threshold=0", "must be positive"),
        ("test.recall_values=[5,1]", "increasing"),
        ("train.lr=fast", "must be a number"),
        ("model.netvlad_clusters=2.5", "must be an integer"),
        ("model.l2=everywhere", "choose one of: before_pool, after_pool, none"),
        ("train.queries_per_epoch=1500", "multiple of train.cache_refresh_rate"),
        ("data.resize_fraction=1.5", "must lie in"),
        ("test.memory_budget_mb=100", "only test.knn=Flat"),
        ("device=tpu", "choose auto, cpu, cuda"),
        ("noequals", "key=value"),
    ],
)
def test_bad_values_name_the_key(override, match):
    extra = ["test.knn=IVF16,Flat"] if override.startswith("test.memory") else []
    with pytest.raises(BadInput, match=match):
        load_config(overrides=[override, *extra])


def test_bad_yaml_files(tmp_path):
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(BadInput, match="broken.yaml line 2: not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(BadInput, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "section.yaml").write_text("model: vgg16\n")
    with pytest.raises(BadInput, match="section 'model' must be a mapping"):
        load_config(tmp_path / "section.yaml")
    with pytest.raises(BadInput, match="cannot be read"):
        load_config(tmp_path / "missing.yaml")
    # The safe loader refuses Python objects.
    (tmp_path / "evil.yaml").write_text("seed: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(BadInput, match="not valid YAML"):
        load_config(tmp_path / "evil.yaml")


def test_config_is_frozen_and_key_ignores_the_seed():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3
    assert cfg.key() == cfg.replace(seed=5).key()
    assert cfg.key() != cfg.replace(**{"model.aggregation": "gem"}).key()
    assert load_config(overrides=[("model.backbone", "vgg16")]).to_dict()["model"]["backbone"] == "vgg16"


def test_help_lists_every_key():
    text = help_text()
    for key in all_keys():
        assert key in text
    assert "train.augmentation.brightness" in all_keys()
    assert isinstance(Config(), Config)
