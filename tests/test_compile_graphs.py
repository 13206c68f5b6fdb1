"""``test.compile``: one compiled graph per model and input shape class, counted with dynamo's own
counters on the CPU: short batches padded, long ones split, other image sizes (crops) eager, and
``extraction_ms`` through the same graph as extraction."""

import torch
from torch import nn

from vgray.models.profile import extraction_ms
from vgray.runtime import Runtime


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.nn.functional.normalize(self.conv(x).relu().mean((2, 3)), dim=1)


def test_one_graph_per_model_and_shape_class():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Tiny()
    rt = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=4, progress=False, compile=True)
    compiled = rt.prepare(model)
    with torch.inference_mode():
        outs = {n: rt.forward(compiled, rt.to_device(torch.rand(n, 3, 16, 16))) for n in (4, 3, 9)}
        crop = rt.to_device(torch.rand(2, 3, 12, 12))  # a crop method's views: another size, run eager
        assert torch.allclose(rt.forward(compiled, crop), model(crop), atol=1e-6)
        x = rt.to_device(torch.rand(9, 3, 16, 16))
        assert torch.allclose(rt.forward(compiled, x), model(x), atol=1e-5)
    assert {n: tuple(o.shape) for n, o in outs.items()} == {4: (4, 4), 3: (3, 4), 9: (9, 4)}
    assert extraction_ms(model, (16, 16), rt, runs=1, warmup=1) > 0  # same mode, same batch size
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["recompiles"]
