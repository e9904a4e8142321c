"""Where model weights live and how they are identified (no torch needed)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from speakerdb.errors import ModelError

__all__ = ["ge2e_weights_path", "weights_sha256"]

_hash_cache: dict[tuple[str, int, int], str] = {}


def ge2e_weights_path() -> Path:
    """Path of the GE2E checkpoint bundled in the ``resemblyzer`` package (``pretrained.pt``).

    Found with importlib's finder, without importing resemblyzer (its modules pull librosa).
    Raises ModelError when the package or the file is missing.
    """
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the GE2E weights come from the 'resemblyzer' package, which is not installed "
            "(pip install resemblyzer)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise ModelError(f"GE2E weights missing from the resemblyzer package: {path}")
    return path


def weights_sha256(path: Path) -> str:
    """Hex sha256 of a weights file: the identity recorded with every vector it makes.

    Cached per (path, size, mtime) within the process.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ModelError(f"cannot read model weights {path}: {exc.strerror or exc}") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]
