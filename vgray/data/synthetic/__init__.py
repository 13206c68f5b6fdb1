"""A procedural city photographed along its streets: vgray's offline geo-localization dataset.

Nothing can be downloaded where vgray is tested, so this package renders its own dataset in the
VG benchmark format (Berton et al., CVPR 2022)::

    OUT/images/{train,val,test}/{database,queries}/
        @east@north@zone@band@lat@lon@pano@@heading@@@@@note@.jpg

Each split is its own neighbourhood (own streets, own buildings) placed a few hundred metres away
from the others in UTM zone 33T, so train/val/test never share a place. Within a neighbourhood:

* the street plan is a jittered Manhattan grid, drawn on a 1 m occupancy map of buildings (lots of
  random frontage, some set back, which opens alleys) and a 0.5 m ground map (asphalt, kerbs,
  sidewalks, lane dashes, zebra crossings, paved courtyards);
* images are rendered with a vectorised Wolfenstein-style raycaster: per image column one ray is
  marched through the occupancy map (DDA), the wall spans rows by 1/distance, façades are
  procedural per building (plaster/brick/panels/glass, window grids, cornices, shop fronts with
  signs, doors, posters), the floor is cast onto the ground map, above the walls is a sky with
  clouds, and distance fog limits how far a view reaches;
* the database is a Street-View-like capture: a camera every ``spacing`` metres along every street
  centreline, several headings per place (like Pitts30k's views per place), same daylight;
* queries are taken a few metres off database places, with heading/pitch/height/field-of-view
  jitter, under changed conditions: sun position, exposure, gamma, colour cast, dusk and night
  (dark, blue-tinted, lit windows), blur and sensor noise. Their ``note`` field
  (``night|day`` + ``_forward|_sideways|_backward`` + ``_synth``, MSLS's vocabulary) says how each
  was taken.

Everything is a function of ``(preset, seed)``: each image draws from its own random stream keyed
by (seed, split, kind, index), so the bytes do not depend on how the work is split among
processes. :func:`generate` writes a dataset atomically; :func:`ensure` keeps one per
(preset, seed) in vgray's cache, safely under concurrent callers. A world of a million images
(the ``rsf`` preset) is written chunk by chunk instead, each file atomically, resumably
(:func:`plan_resumable`, :func:`write_resumable`, :func:`render_chunk`), as Ray tasks by
:mod:`vgray.distributed.synth`; both refuse a dataset that would not fit the disk
(:func:`check_disk`).

The package reads in the order of the pipeline: :mod:`.presets` (sizes), :mod:`.world` (streets,
occupancy map, with :mod:`.ground` and :mod:`.facade` for what the ground and the buildings look
like), :mod:`.capture` (the capture plan), :mod:`.render` (the raycaster and the camera) and
:mod:`.write` (file names, the atomic write, the cache); :mod:`.geo` and :mod:`.procedural` hold
the UTM conversion and the coordinate hash they share.
"""

from __future__ import annotations

from vgray.data.synthetic.capture import CAM_FIELDS, capture_plan, database_places, image_count
from vgray.data.synthetic.geo import UTM_BAND, UTM_ZONE, utm_to_latlon
from vgray.data.synthetic.presets import PRESETS, SPLITS, Preset, SplitSpec
from vgray.data.synthetic.render import render
from vgray.data.synthetic.world import World, build_world
from vgray.data.synthetic.write import (
    KINDS,
    MARKER,
    VERSION,
    check_disk,
    check_preset,
    clear_cache,
    ensure,
    file_name,
    generate,
    image_counts,
    plan_resumable,
    render_chunk,
    render_range,
    write_resumable,
)

__all__ = [
    "VERSION",
    "PRESETS",
    "Preset",
    "SplitSpec",
    "generate",
    "ensure",
    "MARKER",
    "SPLITS",
    "KINDS",
    "World",
    "build_world",
    "capture_plan",
    "database_places",
    "image_count",
    "image_counts",
    "check_disk",
    "plan_resumable",
    "write_resumable",
    "render_chunk",
    "CAM_FIELDS",
    "render",
    "file_name",
    "render_range",
    "clear_cache",
    "check_preset",
    "utm_to_latlon",
    "UTM_ZONE",
    "UTM_BAND",
]
