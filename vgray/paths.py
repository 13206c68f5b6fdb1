"""Where vgray keeps what it makes for itself (dataset indexes, synthetic datasets)."""
import os
from pathlib import Path


def cache_dir() -> Path:
    """``$VGRAY_CACHE``, else ``$XDG_CACHE_HOME/vgray``, else ``~/.cache/vgray`` (created)."""
    if os.environ.get("VGRAY_CACHE"):
        path = Path(os.environ["VGRAY_CACHE"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "vgray"
    path.mkdir(parents=True, exist_ok=True)
    return path
