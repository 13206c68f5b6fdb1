"""The sizes of the synthetic datasets: one :class:`Preset` per name, one :class:`SplitSpec` per split."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    Two fields say how a preset is written, not what it looks like, and stay out of the dataset's
    marker (``GENERATION_FIELDS``): ``jpeg_bytes``, the mean JPEG size measured on a sample of
    the preset (what the free-space check multiplies by the image count; 0: estimated from the
    pixel count), and ``ray``, whether ``vgray synth`` renders it as Ray tasks, resumably
    (:mod:`vgray.distributed.synth`), even without ``--address``.
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
    jpeg_bytes: int = field(default=0, metadata={"generation": True})
    ray: bool = field(default=False, metadata={"generation": True})

    def split(self, name: str) -> SplitSpec:
        """The :class:`SplitSpec` of split ``name`` (train, val or test)."""
        return getattr(self, name)


#: The :class:`Preset` fields about how a dataset is written, not what it holds.
GENERATION_FIELDS = ("jpeg_bytes", "ray")

PRESETS: dict[str, Preset] = {
    # Builds in a few seconds on one core; what the test suite uses.
    "tiny": Preset(
        "tiny",
        96,
        128,
        train=SplitSpec(3, 3, 100),
        val=SplitSpec(2, 2, 100),
        test=SplitSpec(4, 4, 150),
        jpeg_bytes=5147,
    ),
    # A couple of thousand database images per train split, for quick real runs.
    "small": Preset(
        "small",
        180,
        240,
        train=SplitSpec(6, 6, 500),
        val=SplitSpec(5, 5, 300),
        test=SplitSpec(5, 5, 300),
        processes=True,
        jpeg_bytes=13667,
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
        jpeg_bytes=7321,
    ),
    # As large as R-SF (Berton et al., Table 2: 1.05 million database images, 12 crops of each of
    # about 88,000 panoramas) in its test database, and of MSLS's order in its training database
    # (over 500,000 images), at a small image size: what the scale study (issue 30) runs on.
    # Counts for seed 0: test 1,085,232 database (at least 1,052,112 for seeds 0-9), train
    # 509,952 (at least 509,952); 1,614,396 images in all, about 4.6 GB (6.6 GB in 4 KiB blocks).
    # Written as Ray tasks, resumably.
    "rsf": Preset(
        "rsf",
        60,
        80,
        train=SplitSpec(63, 63, 10000),
        val=SplitSpec(6, 6, 500),
        test=SplitSpec(91, 91, 3000),
        headings=12,
        processes=True,
        jpeg_bytes=2822,
        ray=True,
    ),
}
