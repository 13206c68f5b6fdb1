"""The door of environment variables: every variable vgray, or a library for vgray, reads, listed in
:data:`VARIABLES` and checked once, by :func:`check_environment`, when ``vgray`` starts (after its
options are read, before the command runs). A bad value ends the command with exit status 2 and one
line naming the variable, before anything is written.

vgray's own variables follow vgray's empty-value rule (set but empty is refused, never read as the
default); the variables of others keep their owners' meaning (``XDG_CACHE_HOME`` and ``RAY_ADDRESS``
set but empty are unset, as the XDG base directory specification and Ray read them).
"""

from __future__ import annotations

import os
import re
from typing import Callable, Dict, Mapping, Optional

from vgray.errors import BadInput, shown
from vgray.paths import check_output_dir

# name -> (who reads it, what it means, what is checked at start-up)
VARIABLES: Dict[str, str] = {
    "VGRAY_CACHE": "vgray: the folder of its cache (dataset indexes, synthetic datasets, evaluation shards); "
    "checked: not empty, a folder vgray can create or write (the path door)",
    "XDG_CACHE_HOME": "vgray, where VGRAY_CACHE is unset: the cache is XDG_CACHE_HOME/vgray; checked: an "
    "absolute path whose vgray folder can be created or written (empty: unset, as the XDG specification says)",
    "RAY_ADDRESS": "Ray and vgray's Ray commands without --address: the cluster to join; checked: auto, local, "
    "HOST:PORT or ray://HOST:PORT (empty: unset, as Ray reads it); whether a cluster answers is checked on joining",
    "CUDA_VISIBLE_DEVICES": "CUDA, Ray and vgray's device choice: the GPUs this process sees (empty: none); "
    "not checked, since CUDA stops at the first entry it cannot use and schedulers write their own forms",
    "TORCH_HOME": "torch: where pretrained weights are downloaded (TORCH_HOME/hub/checkpoints); not checked "
    "at start-up, since most commands download nothing (the weights' reader reports a bad folder)",
    "MLFLOW_ALLOW_FILE_STORE": "vgray's sweep file check and MLflow: true allows a file-store tracking URI; "
    "any other value means false; not checked",
    "VGRAY_HYPOTHESIS": "the test suite only: the Hypothesis profile (suite or slow); vgray never reads it",
}

_RAY_ADDRESS = re.compile(r"^(?:auto|local|(?:ray://)?(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5}))$")


def _vgray_cache(value: str, environ: Mapping[str, str]) -> None:
    if not value.strip():
        raise BadInput(
            "VGRAY_CACHE is set but empty; an empty value is refused, not read as the default: unset it "
            "(the cache is then XDG_CACHE_HOME/vgray or ~/.cache/vgray) or give a folder"
        )
    check_output_dir(value, "VGRAY_CACHE")


def _xdg_cache_home(value: str, environ: Mapping[str, str]) -> None:
    if not value or environ.get("VGRAY_CACHE"):  # empty: unset (XDG); VGRAY_CACHE comes first
        return
    if not os.path.isabs(value):
        raise BadInput(
            f"XDG_CACHE_HOME={shown(value)} must be an absolute path (the XDG base directory specification); "
            f"give one, or set VGRAY_CACHE"
        )
    check_output_dir(os.path.join(value, "vgray"), "XDG_CACHE_HOME")


def _ray_address(value: str, environ: Mapping[str, str]) -> None:
    if not value:  # empty: unset, as Ray reads it
        return
    m = _RAY_ADDRESS.match(value.strip())
    if not m or (m.group(1) is not None and not 0 < int(m.group(1)) < 65536):
        raise BadInput(
            f"RAY_ADDRESS={shown(value)} is not a Ray cluster address; give auto, HOST:PORT or ray://HOST:PORT, "
            f"or unset it for a local Ray"
        )


CHECKS: Dict[str, Callable[[str, Mapping[str, str]], None]] = {
    "VGRAY_CACHE": _vgray_cache,
    "XDG_CACHE_HOME": _xdg_cache_home,
    "RAY_ADDRESS": _ray_address,
}


def check_environment(environ: Optional[Mapping[str, str]] = None) -> None:
    """Check every variable of :data:`VARIABLES` that has a check (:data:`CHECKS`) and is set in
    ``environ`` (default: this process's); :class:`BadInput` naming the first bad one."""
    environ = os.environ if environ is None else environ
    for name, check in CHECKS.items():
        if name in environ:
            check(environ[name], environ)
