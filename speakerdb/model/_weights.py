"""Where model weights live, how they are identified, and how a checkpoint from outside is
read (torch imported only for that)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import mmap
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from speakerdb.errors import ModelError

__all__ = ["ge2e_weights_path", "read_checkpoint", "weights_sha256"]

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


# --- checkpoints from outside ------------------------------------------------------------------


class _MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a buffer, without copying it (io.BytesIO copies any
    buffer but an immutable bytes object)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view.cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        count = max(0, min(len(target), len(self._view) - self._pos))
        target[:count] = self._view[self._pos : self._pos + count]
        self._pos += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


# How torch 2.x names a refused global ("Unsupported global: GLOBAL x.y was not an allowed
# global", "Trying to load unsupported GLOBAL x.y whose module x is blocked").
_UNSUPPORTED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]{1,200})")
_ADVICE = (
    "weights_only",
    "Weights only load failed",
    "trusted source",
    "trust the source",
    "Please file an issue",
    "Check the documentation",
    "add_safe_globals",
    "safe_globals",
    "recommended steps",
)


def read_checkpoint(
    data: bytes | bytearray | memoryview | mmap.mmap, source: str, limit: int
) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint held in memory (not copied).

    A zip checkpoint (what torch.save writes) is checked first: its members must be stored,
    as torch.save writes them, and add up to at most ``limit`` bytes, so that a small file
    cannot inflate to gigabytes inside torch. torch's warnings (a pickle protocol it did not
    write, ...) are not passed on, and its errors become one line without its advice to
    load with ``weights_only=False`` (which would run the file's code).

    Raises ModelError naming ``source``: oversized or compressed members, Python objects
    beyond tensors and plain containers (never unpickled), or anything torch cannot read.
    """
    import torch

    view = memoryview(data).cast("B")
    if bytes(view[:4]) == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(_MemoryFile(view)) as archive:
                members = archive.infolist()
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise ModelError(f"{source}: not a readable checkpoint ({_one_line(exc)})") from None
        packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise ModelError(
                f"{source}: checkpoint member {packed[0]!r} is compressed (torch.save stores "
                "its members; refused)"
            )
        inflated = sum(m.file_size for m in members)
        if inflated > limit:
            raise ModelError(f"{source}: checkpoint unpacks to {inflated} bytes, over {limit}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = io.BufferedReader(_MemoryFile(view))
            return torch.load(reader, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ModelError(f"{source}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """torch's error in one line, never with its advice to retry with weights_only=False."""
    text = str(exc)
    found = _UNSUPPORTED_GLOBAL.search(text)
    if found:
        return (
            f"not a plain tensor checkpoint: it holds Python objects ({found.group(1)}), "
            "refused, never unpickled"
        )
    if not (isinstance(exc, pickle.UnpicklingError) or "weights_only" in text):
        return f"not a readable checkpoint: {_one_line(exc)}"
    # torch's safe unpickler: its lines of advice dropped, the first line of fact kept.
    facts = [
        line.strip().removeprefix("WeightsUnpickler error:").strip()
        for line in text.splitlines()
        if not any(word in line for word in _ADVICE)
    ]
    fact = next((f for f in facts if f), "")
    detail = f" ({fact[:100]})" if fact else ""
    return f"not a plain tensor checkpoint: torch's safe loader refuses it{detail}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
