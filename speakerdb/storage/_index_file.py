"""The vector-index cache file: written atomically, self-describing, checked on load.

Layout: ``SPKDBIX1`` | header length (u32, little endian) | JSON header | FAISS index bytes.
The header names the database instance and model the vectors belong to, the last change
sequence number applied, the index parameters, and the sha256 of the FAISS bytes. A file
that is unreadable, corrupt, or belongs to another database or model is never used: the
store rebuilds from SQL instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from speakerdb.storage._vector_index import IndexParams, VectorIndex

__all__ = ["IndexFileHeader", "read_index_file", "write_index_file"]

MAGIC = b"SPKDBIX1"


@dataclass(frozen=True)
class IndexFileHeader:
    instance_id: str
    model_key: list[str | int]
    dimension: int
    applied_seq: int
    kind: str
    nlist: int
    nprobe: int
    count: int
    sha256: str = ""
    trained_on: int = 0

    @property
    def params(self) -> IndexParams:
        return IndexParams(self.kind, self.nlist, self.nprobe, self.trained_on)


def write_index_file(path: Path, header: IndexFileHeader, index: VectorIndex) -> None:
    """Write atomically: a temp file in the same folder, fsync, rename over ``path``, fsync
    the folder. A reader sees the old file or the new one, never a mixture."""
    payload = index.to_bytes()
    header = IndexFileHeader(**{**asdict(header), "sha256": hashlib.sha256(payload).hexdigest()})
    encoded = json.dumps(asdict(header), sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_orphaned_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(MAGIC + struct.pack("<I", len(encoded)) + encoded)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_orphaned_temp_files(path: Path) -> None:
    """Temp files left by writers that were killed mid-write (their pid is gone)."""
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        pid_text = tmp.name[len(path.name) + 1 :].split(".", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except PermissionError:
            pass  # alive, owned by someone else


def read_index_file(path: Path) -> tuple[IndexFileHeader, VectorIndex] | str:
    """The header and index stored at ``path``, or a short reason why it cannot be used."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if len(data) < len(MAGIC) + 4 or not data.startswith(MAGIC):
        return "not a speakerdb index file"
    (length,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        fields = json.loads(data[start : start + length])
        header = IndexFileHeader(**fields)
    except (ValueError, TypeError):
        return "corrupt header"
    payload = data[start + length :]
    if hashlib.sha256(payload).hexdigest() != header.sha256:
        return "corrupt (checksum mismatch)"
    try:
        index = VectorIndex.from_bytes(payload, header.dimension, header.params)
    except Exception as exc:  # FAISS raises RuntimeError with C++ text
        return f"unreadable by FAISS ({type(exc).__name__})"
    if len(index) != header.count:
        return "corrupt (vector count mismatch)"
    return header, index
