"""The vector-index cache file: written atomically, self-describing, authenticated, checked
before it is read.

Layout (version 2): ``SPKDBIX2`` | header length (u32, little endian) | JSON header | FAISS
index bytes | HMAC-SHA256 (32 bytes) over everything before it. The header names the
database instance and model the vectors belong to, the last change sequence number applied,
the index parameters, and the sha256 of the FAISS bytes. The MAC key is a random key kept in
the database (``store_state.index_key``): a file not written by a holder of the database --
forged, or planted from elsewhere -- is never used, even when it is self-consistent.

A file is only read once its size agrees with what its header and the database allow (the
vector count is at most the number of changes the database ever made, the vectors have the
model's dimension, and each index kind has a bounded overhead), so a huge or sparse file is
rejected after reading its header, never loaded into memory. A file that is unreadable,
oversized, corrupt, unauthenticated, or belongs to another database or model is never used:
the store rebuilds from SQL instead. Version 1 files (no MAC) are read only to be inspected
by ``db check``; the store rebuilds them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import io
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from speakerdb.storage._vector_index import IndexParams, VectorIndex

__all__ = [
    "Expected",
    "IndexFile",
    "IndexFileHeader",
    "folder_lock",
    "payload_limit",
    "read_header",
    "read_index_file",
    "write_index_file",
]

MAGIC = b"SPKDBIX2"
MAGIC_V1 = b"SPKDBIX1"  # before authentication: inspected, never used
MAC_SIZE = 32
MAX_HEADER_BYTES = 64 * 1024
_PREFIX = len(MAGIC) + 4
_CHUNK = 1 << 20

# Serialised FAISS sizes beyond the raw vectors (measured with faiss 1.12, 256-d): a flat
# IndexIDMap2 adds 8 bytes of id per vector and 90 bytes in all; IVF-Flat (and IVF-SQ8, whose
# vectors take a byte per dimension) adds per vector its id and about 16 bytes of the id hash
# map, and per list its centre and a few counters. The limits below are those figures with a
# wide margin: a legitimate file is always below them, a file much larger than its header
# claims is rejected unread.
_FIXED_OVERHEAD = 4096
_PER_VECTOR_OVERHEAD = 48
_PER_LIST_OVERHEAD = 64


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
    # The database's identity (see speakerdb.storage._cache_files.database_identity): which
    # copy of the database wrote the file. Empty in files written before it was recorded.
    database: str = ""

    @property
    def params(self) -> IndexParams:
        return IndexParams(self.kind, self.nlist, self.nprobe, self.trained_on)


@dataclass(frozen=True)
class IndexFile:
    """A parsed index file. ``authentic``: its MAC verified with the database's key (always
    False for a version 1 file). Only authentic files may be used for searching."""

    header: IndexFileHeader
    index: VectorIndex
    authentic: bool


def payload_limit(kind: str, count: int, dimension: int, nlist: int) -> int:
    """The most FAISS bytes a legitimate index of ``count`` ``dimension``-d vectors (in
    ``nlist`` lists for ivf) serialises to."""
    # ivfsq stores one byte per dimension (plus its quantiser's 2 floats per dimension).
    per_vector = (dimension if kind == "ivfsq" else 4 * dimension) + _PER_VECTOR_OVERHEAD
    lists = nlist * (4 * dimension + _PER_LIST_OVERHEAD) if kind in ("ivf", "ivfsq") else 0
    quantiser = 8 * dimension if kind == "ivfsq" else 0
    return _FIXED_OVERHEAD + count * per_vector + lists + quantiser


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock (flock on the folder itself) held while a process brings its
    index up to date and replaces the file, so that no writer can replace the file with an
    index older than the one just written. Raises OSError when the folder cannot be
    opened."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_index_file(path: Path, header: IndexFileHeader, index: VectorIndex, key: bytes) -> None:
    """Write atomically: a temp file in the same folder, fsync, rename over ``path``, fsync
    the folder. A reader sees the old file or the new one, never a mixture. The caller holds
    :func:`folder_lock` and has brought ``index`` up to date inside it. Raises OSError."""
    payload = index.to_bytes()
    header = IndexFileHeader(**{**asdict(header), "sha256": hashlib.sha256(payload).hexdigest()})
    encoded = json.dumps(asdict(header), sort_keys=True).encode()
    prefix = MAGIC + struct.pack("<I", len(encoded)) + encoded
    mac = hmac.new(key, prefix, hashlib.sha256)
    mac.update(payload)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_orphaned_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(prefix)
            fh.write(payload)
            fh.write(mac.digest())
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


@dataclass(frozen=True)
class Expected:
    """What a usable file must match: the database ``instance_id``, the model
    (``model_key``: name, weights sha256, dimension), the MAC ``key``, and the database's
    change counter ``seq`` (a file never applied more changes than the database made, and
    holds at most one vector per speaker ever enrolled, each of which took a change).
    ``database``: the database's identity, checked when both the file and the caller
    know one (a copy of the database keeps the instance id, not the identity)."""

    instance_id: str
    model_key: tuple[str, str, int]
    key: bytes
    seq: int
    database: str = ""

    @property
    def dimension(self) -> int:
        return int(self.model_key[2])


def read_index_file(path: Path, expected: Expected) -> IndexFile | str:
    """The index stored at ``path``, or a short reason why it cannot be used.

    The header is checked against ``expected`` and the file's size against what the header
    and the database allow before the payload is read; the payload is then read once,
    hashed and authenticated. A file that passes every check but the MAC (or a version 1
    file) comes back with ``authentic`` False: fit for inspection, not for use.
    """
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    with fh:
        try:
            return _read(fh, expected)
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"


def read_header(path: Path) -> IndexFileHeader | None:
    """The header of the index file at ``path`` (at most 64 KiB read), or None when it is
    not a readable speakerdb index file. Nothing is authenticated: for finding the files
    of a database, never for using one."""
    try:
        with path.open("rb") as fh:
            prefix = fh.read(_PREFIX)
            if len(prefix) < _PREFIX or prefix[: len(MAGIC)] not in (MAGIC, MAGIC_V1):
                return None
            (length,) = struct.unpack("<I", prefix[len(MAGIC) :])
            if length > MAX_HEADER_BYTES:
                return None
            fields = json.loads(fh.read(length))
            header = IndexFileHeader(**fields)
    except (OSError, ValueError, TypeError):
        return None
    return header if isinstance(header.instance_id, str) else None


def _read(fh: io.BufferedReader, expected: Expected) -> IndexFile | str:
    size = os.fstat(fh.fileno()).st_size
    prefix = fh.read(_PREFIX)
    if len(prefix) < _PREFIX or prefix[: len(MAGIC)] not in (MAGIC, MAGIC_V1):
        return "not a speakerdb index file"
    version = 2 if prefix.startswith(MAGIC) else 1
    (length,) = struct.unpack("<I", prefix[len(MAGIC) :])
    if length > MAX_HEADER_BYTES or _PREFIX + length > size:
        return "corrupt header"
    encoded = fh.read(length)
    try:
        header = IndexFileHeader(**json.loads(encoded))
        checks = (int(header.count), int(header.nlist), int(header.applied_seq))
    except (ValueError, TypeError):
        return "corrupt header"
    if header.instance_id != expected.instance_id:
        return "built from another database"
    if expected.database and header.database and header.database != expected.database:
        return "built from another copy of this database"
    if tuple(header.model_key) != expected.model_key or header.dimension != expected.dimension:
        return "built with another model"
    count, nlist, applied = checks
    if applied > expected.seq:
        return "ahead of the database (restored from an older backup?)"
    if not 0 <= count <= applied or not 0 <= nlist <= max(applied, 1):
        return "corrupt (claims more vectors than the database ever held)"
    payload_size = size - _PREFIX - length - (MAC_SIZE if version == 2 else 0)
    limit = payload_limit(header.kind, count, expected.dimension, nlist)
    if not 0 < payload_size <= limit:
        return (
            f"corrupt ({size} bytes do not fit {count} vectors of {expected.dimension} dimensions)"
        )
    # Read only now that the size is known to be sane; hash and authenticate as it comes.
    mac = hmac.new(expected.key, prefix + encoded, hashlib.sha256)
    checksum = hashlib.sha256()
    payload = bytearray(payload_size)
    view = memoryview(payload)
    done = 0
    while done < payload_size:
        got = fh.readinto(view[done : min(done + _CHUNK, payload_size)])
        if not got:
            return "corrupt (truncated)"
        mac.update(view[done : done + got])
        checksum.update(view[done : done + got])
        done += got
    trailer = fh.read(MAC_SIZE) if version == 2 else b""
    if checksum.hexdigest() != header.sha256:
        return "corrupt (checksum mismatch)"
    authentic = version == 2 and hmac.compare_digest(mac.digest(), trailer)
    try:
        index = VectorIndex.from_bytes(payload, expected.dimension, header.params)
    except Exception as exc:  # FAISS raises RuntimeError with C++ text
        return f"unreadable by FAISS ({type(exc).__name__})"
    if len(index) != count:
        return "corrupt (vector count mismatch)"
    return IndexFile(header, index, authentic)
