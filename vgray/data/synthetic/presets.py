"""The sizes of the synthetic datasets: one :class:`Preset` per name, one :class:`SplitSpec` per split."""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """One neighbourhood: ``blocks_x`` x ``blocks_y`` city blocks and ``queries`` query images."""

    blocks_x: int
    blocks_y: int
    queries: int


@dataclass(frozen=True)
class Preset:
    """Size and capture parameters of a synthetic dataset.

    ``height`` x ``width`` is the JPEG size; ``hfov_deg`` the database camera's horizontal field of
    view; ``spacing_m`` the distance between database places along a street; ``headings`` the
    number of database views per place (evenly spaced, the first along the street); ``night_frac``
    the share of night queries; ``processes`` whether rendering uses all cores.
    """

    name: str
    height: int
    width: int
    train: SplitSpec
    val: SplitSpec
    test: SplitSpec
    hfov_deg: float = 80.0
    spacing_m: float = 10.0
    headings: int = 4
    night_frac: float = 0.15
    processes: bool = False

    def split(self, name: str) -> SplitSpec:
        """The :class:`SplitSpec` of split ``name`` (train, val or test)."""
        return getattr(self, name)


PRESETS: dict[str, Preset] = {
    # Builds in a few seconds on one core; what the test suite uses.
    "tiny": Preset("tiny", 96, 128, train=SplitSpec(3, 3, 100), val=SplitSpec(2, 2, 100), test=SplitSpec(4, 4, 150)),
    # A couple of thousand database images per train split, for quick real runs.
    "small": Preset(
        "small",
        180,
        240,
        train=SplitSpec(6, 6, 500),
        val=SplitSpec(5, 5, 300),
        test=SplitSpec(5, 5, 300),
        processes=True,
    ),
    # For scale benchmarks only: over 100,000 database images in test.
    "large": Preset(
        "large",
        120,
        160,
        train=SplitSpec(12, 12, 1000),
        val=SplitSpec(8, 8, 500),
        test=SplitSpec(50, 50, 2000),
        processes=True,
    ),
}
