"""The vector-index cache file: written atomically, self-describing, authenticated, checked
before it is read.

Layout (version 3): ``SPKDBIX3`` | header length (u32, little endian) | JSON header | zero
padding to a multiple of 4096 bytes | FAISS index bytes (inverted kinds without their id hash
map) | a 32-byte tag. The header names the database instance and model the vectors belong to,
the last change sequence number applied, and the index parameters. The tag is an
HMAC-SHA256 tree: each 64 MiB piece of the FAISS bytes has its own HMAC (keyed, labelled with
its number), and the tag is the HMAC of everything before the FAISS bytes, their length and
the pieces' HMACs in order -- so the pieces are authenticated in parallel, in one pass over
the file. The MAC key is a random key kept in the database (``store_state.index_key``): a
file not written by a holder of the database -- forged, planted from elsewhere, or altered --
is never used, even when it is self-consistent.

A version 3 file is read by mapping it into memory: the whole mapping is authenticated
before FAISS sees a byte of it, then FAISS reads it without copying (the inverted lists stay
views of the mapped file, see :meth:`VectorIndex.from_mapped`), so a new process's load
costs one keyed hash of the file at about 1.8 GB/s per core, not a read, two hashes and two
copies. The writer never modifies a file in place (a new file is renamed over the old one,
whose mapping stays intact), so what was authenticated is what is searched. The residual
risk, accepted: the account owning the 0600 file in its 0700 folder (the service's own)
could still rewrite its bytes in place after the check, and they would be searched
unchecked; truncating it in place makes the process fail (SIGBUS). Neither happens through
speakerdb.

Version 2 files (``SPKDBIX2``: one HMAC-SHA256 over the whole file, a sha256 of the FAISS
bytes in the header) are still read the old way -- copied into memory -- and used when
authentic; the next save writes version 3.

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
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from speakerdb.storage._vector_index import IndexParams, VectorIndex

__all__ = [
    "Expected",
    "IndexFile",
    "IndexFileHeader",
    "file_tag",
    "folder_lock",
    "payload_limit",
    "read_header",
    "read_index_file",
    "write_index_file",
]

MAGIC = b"SPKDBIX3"
MAGIC_V2 = b"SPKDBIX2"  # one HMAC pass over a copied payload: read, then rewritten as v3
MAGIC_V1 = b"SPKDBIX1"  # before authentication: inspected, never used
_VERSIONS = {MAGIC: 3, MAGIC_V2: 2, MAGIC_V1: 1}
MAC_SIZE = 32
MAX_HEADER_BYTES = 64 * 1024
PAGE = 4096  # the FAISS bytes of a version 3 file start on a page boundary
MAC_PIECE = 64 << 20  # bytes per separately authenticated piece (version 3)
_PIECE_LABEL = b"speakerdb index piece"
# Threads hashing pieces at once: hashlib releases the GIL, so each core hashes a piece.
_MAC_THREADS = max(1, min(4, os.cpu_count() or 1))
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
    False for a version 1 file; a version 3 file that fails it is not parsed at all). Only
    authentic files may be used for searching. ``version``: the layout it was read in."""

    header: IndexFileHeader
    index: VectorIndex
    authentic: bool
    version: int = 3


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


def file_tag(key: bytes, head: bytes | memoryview, payload: bytes | memoryview) -> bytes:
    """The version 3 tag (32 bytes) of a file whose FAISS bytes ``payload`` follow ``head``
    (magic, header length, header, padding): HMAC-SHA256 under ``key`` of ``head``, the
    payload's length (u64) and the HMACs of its ``MAC_PIECE``-byte pieces, each keyed with
    ``key`` over a label, its number (u64) and its bytes. The pieces are hashed on up to
    ``_MAC_THREADS`` threads."""
    view = memoryview(payload).cast("B")
    starts = range(0, len(view), MAC_PIECE)

    def piece(number: int) -> bytes:
        start = starts[number]
        mac = hmac.new(key, _PIECE_LABEL + struct.pack("<Q", number), hashlib.sha256)
        mac.update(view[start : start + MAC_PIECE])
        return mac.digest()

    if len(starts) > 1 and _MAC_THREADS > 1:
        with ThreadPoolExecutor(min(_MAC_THREADS, len(starts))) as pool:
            tags = list(pool.map(piece, range(len(starts))))
    else:
        tags = [piece(number) for number in range(len(starts))]
    mac = hmac.new(key, head, hashlib.sha256)
    mac.update(struct.pack("<Q", len(view)))
    for tag in tags:
        mac.update(tag)
    return mac.digest()


def write_index_file(path: Path, header: IndexFileHeader, index: VectorIndex, key: bytes) -> None:
    """Write atomically (version 3): a temp file in the same folder, fsync, rename over
    ``path``, fsync the folder. A reader sees the old file or the new one, never a mixture,
    and a file is never changed once renamed (readers map it). The caller holds
    :func:`folder_lock` and has brought ``index`` up to date inside it. Raises OSError."""
    payload = index.to_bytes(id_map=False)
    header = IndexFileHeader(**{**asdict(header), "sha256": ""})  # the tag covers the payload
    encoded = json.dumps(asdict(header), sort_keys=True).encode()
    prefix = MAGIC + struct.pack("<I", len(encoded)) + encoded
    prefix += bytes(-len(prefix) % PAGE)
    tag = file_tag(key, prefix, payload)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_orphaned_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(prefix)
            fh.write(payload)
            fh.write(tag)
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
    and the database allow before the payload is read. A version 3 file is then mapped,
    authenticated whole, and only then parsed (its lists left in the mapping); one that
    fails the MAC is refused unparsed. A version 2 file is read once, hashed and
    authenticated; one that passes every check but the MAC (or a version 1 file) comes back
    with ``authentic`` False: fit for inspection, not for use.
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
            if len(prefix) < _PREFIX or prefix[: len(MAGIC)] not in _VERSIONS:
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
    if len(prefix) < _PREFIX or prefix[: len(MAGIC)] not in _VERSIONS:
        return "not a speakerdb index file"
    version = _VERSIONS[prefix[: len(MAGIC)]]
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
    start = _PREFIX + length
    if version == 3:
        start += -start % PAGE
    payload_size = size - start - (MAC_SIZE if version >= 2 else 0)
    limit = payload_limit(header.kind, count, expected.dimension, nlist)
    if not 0 < payload_size <= limit:
        return (
            f"corrupt ({size} bytes do not fit {count} vectors of {expected.dimension} dimensions)"
        )
    if version == 3:
        return _read_mapped(fh, size, start, header, expected)
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
    return IndexFile(header, index, authentic, version)


def _read_mapped(
    fh: io.BufferedReader, size: int, start: int, header: IndexFileHeader, expected: Expected
) -> IndexFile | str:
    """A version 3 file whose header and size passed: map exactly the ``size`` bytes checked,
    authenticate them, and only then let FAISS read the payload in place."""
    try:
        mapping = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
    except ValueError:  # shorter than when its size was taken: replaced or truncated
        return "corrupt (truncated)"
    data = np.frombuffer(mapping, dtype=np.uint8)
    payload = data[start : size - MAC_SIZE]
    tag = file_tag(expected.key, data[:start].data, payload.data)
    if not hmac.compare_digest(tag, data[size - MAC_SIZE :].tobytes()):
        return "corrupt or forged (not authenticated: altered, or not written by this database)"
    try:
        index = VectorIndex.from_mapped(payload, expected.dimension, header.params)
    except Exception as exc:  # FAISS raises RuntimeError with C++ text
        return f"unreadable by FAISS ({type(exc).__name__})"
    if len(index) != header.count:
        return "corrupt (vector count mismatch)"
    return IndexFile(header, index, authentic=True, version=3)
