"""vgray.checkpoint: the one home of weights files. The fit-check lists every mismatch in one line;
the readers refuse what they cannot use with one line naming the file; writes are atomic."""

import numpy as np
import pytest
import torch
from torch import nn

from vgray import checkpoint
from vgray.checkpoint import Mismatch, check_fits, load_fitting, mismatches
from vgray.errors import BadInput


def state(**shapes):
    return {k.replace("__", "."): torch.zeros(s) for k, s in shapes.items()}


def test_mismatches_lists_every_kind_in_the_module_order():
    own = state(a__weight=(2, 3), b__weight=(4,), c__weight=(1,), z__bias=(5,))
    loaded = state(y__weight=(7,), a__weight=(3, 2), c__weight=(1,), x__weight=(7,), z__bias=(6,))
    # The module's keys first, as its layers come (the first layer that differs first), then the extra ones.
    assert mismatches(own, loaded) == [
        Mismatch("shape", "a.weight", (3, 2), (2, 3)),
        Mismatch("missing", "b.weight"),
        Mismatch("shape", "z.bias", (6,), (5,)),
        Mismatch("unexpected", "y.weight"),
        Mismatch("unexpected", "x.weight"),
    ]
    assert mismatches(own, {k: v.clone() for k, v in own.items()}) == []


def test_ignore_and_optional_patterns():
    own = state(body__w=(2,), fc__weight=(10, 2), head__crn__w=(3,), bn__num_batches_tracked=())
    loaded = state(body__w=(2,), fc__weight=(365, 2), classifier__w=(1,))
    # ignore: compared on neither side; optional: may be missing (but not unexpected or misshapen).
    found = mismatches(own, loaded, ignore=("fc.*", "classifier.*"), optional=("head.crn.*", "*num_batches_tracked"))
    assert found == []
    found = mismatches(own, loaded, optional=("head.crn.*",))
    assert [str(m) for m in found] == [
        "fc.weight has shape (365, 2), expected (10, 2)",
        "missing bn.num_batches_tracked",
        "unexpected classifier.w",
    ]


def test_refusal_is_one_line_with_the_first_three_and_a_count():
    own = state(**{f"l{i}__w": (2,) for i in range(6)})
    loaded = state(l0__w=(3,), extra__w=(1,))
    with pytest.raises(BadInput) as info:
        check_fits(own, loaded, "weights file w.pth does not fit net")
    message = str(info.value)
    assert message == (
        "weights file w.pth does not fit net: l0.w has shape (3,), expected (2,); missing l1.w; "
        "missing l2.w (and 4 more)"
    )
    assert "\n" not in message
    with pytest.raises(BadInput, match=r"^w: l0.w has shape \(3,\), expected \(2,\)$"):
        check_fits(state(l0__w=(2,)), state(l0__w=(3,)), "w")
    check_fits(own, {k: v.clone() for k, v in own.items()}, "w")  # nothing to refuse


def test_load_fitting_loads_or_leaves_the_module_untouched():
    torch.manual_seed(0)
    net, other = nn.Linear(3, 2), nn.Linear(3, 2)
    load_fitting(net, other.state_dict(), "x")
    assert torch.equal(net.weight, other.weight)
    before = net.weight.clone()
    with pytest.raises(BadInput, match=r"^x: weight has shape \(5, 3\), expected \(2, 3\); missing bias$"):
        load_fitting(net, {"weight": torch.zeros(5, 3)}, "x")
    assert torch.equal(net.weight, before)
    load_fitting(net, {"weight": torch.ones(2, 3)}, "x", optional=("bias",))  # bias keeps its value
    assert torch.equal(net.weight, torch.ones(2, 3)) and torch.equal(net.bias, other.bias)


def resumable(model: nn.Module, generator=None, **changes) -> dict:
    """A whole training checkpoint of ``model`` (what a resumed run reads), with ``changes``."""
    return {
        "model": model.state_dict(),
        "config": {"model": {"aggregation": "gem"}},
        "optimizer": torch.optim.Adam(model.parameters()).state_dict(),
        "mining": {},
        "epoch": 0,
        "best_r5": -1.0,
        "not_improved": 0,
        "history": [],
        "rng": checkpoint.rng_state(generator or np.random.default_rng(0)),
        **changes,
    }


def test_save_then_read_every_way(tmp_path):
    path = tmp_path / "best.pt"
    model = nn.Linear(2, 2)
    checkpoint.save(path, resumable(model, epoch=1, history=[{"loss": float("nan"), "train_time_s": 1.5}]))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary left behind
    assert checkpoint.load(path)["epoch"] == 1
    ck = checkpoint.read_checkpoint(path, "model.resume_from")
    assert checkpoint.made_for(ck) == {"aggregation": "gem"} and checkpoint.made_for({}) == {}
    assert set(checkpoint.read_weights_file(path)) == set(checkpoint.RESUME_ENTRIES)
    # what a sweep keeps (no optimizer, mining or RNG state) starts a network but resumes nothing
    checkpoint.save(path, {"model": model.state_dict(), "config": {"model": {"aggregation": "gem"}}, "epoch": 3})
    assert checkpoint.read_checkpoint(path, "model.resume_from")["epoch"] == 3
    with pytest.raises(BadInput, match="best.pt lacks optimizer, mining, best_r5, not_improved, history, rng"):
        checkpoint.load(path)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    assert set(checkpoint.read_state_dict(tmp_path / "model.pt")) == {"weight", "bias"}
    # numpy arrays beside the weights (cirtorch's meta) are data, allowed
    torch.save({"meta": {"mean": np.zeros(3)}, "state_dict": model.state_dict()}, tmp_path / "np.pth")
    assert checkpoint.read_weights_file(tmp_path / "np.pth")["meta"]["mean"].shape == (3,)


def test_readers_refuse_with_one_line(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    torch.save({"model": {}}, tmp_path / "no_config.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    cases = [
        (lambda: checkpoint.load(tmp_path / "nope.pt"), "nope.pt: no such file"),
        (lambda: checkpoint.load(junk), "junk.pt is corrupt or not a vgray checkpoint"),
        (lambda: checkpoint.load(tmp_path / "no_config.pt"), "no_config.pt lacks config, optimizer"),
        (
            lambda: checkpoint.read_checkpoint(tmp_path / "nope.pt", "model.resume_from"),
            "model.resume_from=.*nope.pt: no such file",
        ),
        (lambda: checkpoint.read_checkpoint(junk, "k"), "k=.*junk.pt cannot be read as a vgray checkpoint"),
        (lambda: checkpoint.read_checkpoint(tmp_path / "no_config.pt", "k"), "is not a vgray checkpoint"),
        (lambda: checkpoint.read_weights_file(tmp_path / "nope.pt", missing="say this"), "^say this$"),
        (lambda: checkpoint.read_weights_file(junk), "junk.pt cannot be read as a torch checkpoint"),
        (lambda: checkpoint.read_weights_file(tmp_path / "list.pt"), "holds a list"),
        (lambda: checkpoint.read_state_dict(tmp_path / "no_config.pt", "model.pt"), "model.pt is not a state dict"),
    ]
    for read, message in cases:
        with pytest.raises(BadInput, match=message) as info:
            read()
        assert "\n" not in str(info.value)


def test_rng_states_saved_with_more_gpus_restore_on_fewer(tmp_path):
    """A checkpoint written where 3 GPUs were visible (CUDA RNG states faked here) resumes on a
    machine with fewer or none: the states of the GPUs that exist are restored, the rest ignored."""
    from vgray.checkpoint import cuda_states_to_restore, rng_state, set_rng_state

    generator = np.random.default_rng(7)
    fake = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]
    payload = resumable(nn.Linear(2, 2))  # the network drawn before the states are saved
    saved = rng_state(generator)
    saved["cuda"] = fake
    checkpoint.save(tmp_path / "c.pt", {**payload, "rng": saved})
    expected = (torch.rand(3), generator.random(), np.random.random())
    generator = np.random.default_rng(0)
    set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"], generator)  # no raise, CPU states back
    again = (torch.rand(3), generator.random(), np.random.random())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
    assert cuda_states_to_restore(fake, 0) == []
    assert [(i, s is fake[i]) for i, s in cuda_states_to_restore(fake, 1)] == [(0, True)]
    assert [i for i, _ in cuda_states_to_restore(fake[:1], 4)] == [0]  # the other GPUs keep theirs
