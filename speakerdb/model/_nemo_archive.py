"""Reading a NeMo ``.nemo`` archive safely: it is data from outside.

A ``.nemo`` file is a tar archive (gzip-compressed before NeMo 1.7) holding
``model_config.yaml`` and ``model_weights.ckpt`` (a ``torch.save`` state dict), sometimes
beside other artefacts. Nothing is extracted to disk: every member header is checked first
(regular files and directories only, no absolute paths, no ``..``, no duplicates, bounded
count and sizes, all before any data is read), and only the two members needed are read, into
memory. The YAML is parsed with a safe loader (no Python tags are constructed); the weights
are later read with ``torch.load(weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import gzip
import hashlib
import mmap
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import yaml

from speakerdb.errors import ModelError

__all__ = [
    "CONFIG_MEMBER",
    "WEIGHTS_MEMBER",
    "NemoArchive",
    "file_sha256",
    "is_nemo_archive",
    "parse_config",
    "read_nemo_archive",
]

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"

# Limits, checked against member headers before any member data is read. A real speaker model
# holds 2-5 members; TitaNet-L's weights are about 100 MB (the largest NeMo speaker model).
MAX_MEMBERS = 512
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 1 << 30
MAX_MEMBER_BYTES = 1 << 30
MAX_ARCHIVE_BYTES = 2 << 30
MAX_COMPRESSION_RATIO = 20
"""Most a gzip-compressed archive may inflate (bytes out per byte in), judged once it has
inflated past :data:`RATIO_FLOOR`. Weights (float tensors) barely compress (1.1x), YAML about
4x; a file inflating 1000x is zeros: a decompression bomb, refused before it is read."""
RATIO_FLOOR = 16 << 20
# tarfile reads extended (pax / GNU long name) headers whole: bound each single read.
_MAX_SINGLE_READ = 1 << 20
_CHUNK = 1 << 20

_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


@dataclass(frozen=True)
class NemoArchive:
    """The two members a speaker model needs, read into memory."""

    config_text: str
    weights: bytearray | mmap.mmap


class _Refused(Exception):
    """An archive that must not be read further; the message says why (one line)."""


class _BoundedReader:
    """A read-only stream over the (decompressed) archive that refuses, before doing it, any
    single read or seek that a sane archive never needs, so that a hostile header cannot make
    tarfile read gigabytes into memory or decompress without end.

    For a gzip archive ``raw`` is the compressed file: every read and every skip forward
    inflates in bounded blocks through :meth:`read`, which refuses an archive inflating more
    than :data:`MAX_COMPRESSION_RATIO`-fold (and seeks backwards, which would inflate again
    from the start)."""

    def __init__(self, stream: IO[bytes], raw: IO[bytes]) -> None:
        self._stream = stream
        self._raw = raw
        self._compressed = stream is not raw
        self.name = ""
        self.mode = "rb"

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_SINGLE_READ:
            raise _Refused("it asks for an oversized header read (corrupt or hostile archive)")
        if self._stream.tell() + size > MAX_ARCHIVE_BYTES + _MAX_SINGLE_READ:
            raise _Refused(f"it is larger than {MAX_ARCHIVE_BYTES >> 30} GiB")
        data = self._stream.read(size)
        if self._compressed:
            inflated = self._stream.tell()
            if inflated > RATIO_FLOOR and inflated > MAX_COMPRESSION_RATIO * self._raw.tell():
                raise _Refused(
                    f"it inflates more than {MAX_COMPRESSION_RATIO}-fold ({self._raw.tell()} "
                    f"compressed bytes gave {inflated}): a decompression bomb?"
                )
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise _Refused("it needs a relative seek")
        if offset > MAX_ARCHIVE_BYTES + _MAX_SINGLE_READ:
            raise _Refused(f"it is larger than {MAX_ARCHIVE_BYTES >> 30} GiB")
        if not self._compressed:
            return self._stream.seek(offset)
        position = self._stream.tell()
        if offset < position:
            raise _Refused("it needs a backward seek in a compressed archive")
        while position < offset:  # skip by inflating in bounded, checked blocks
            block = self.read(min(_CHUNK, offset - position))
            if not block:
                break
            position += len(block)
        return position

    def tell(self) -> int:
        return self._stream.tell()


def _open_stream(raw: IO[bytes]) -> IO[bytes]:
    """The tar stream: gzip-compressed archives (NeMo < 1.7) are decompressed on the fly."""
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    return raw


def _member_name(member: tarfile.TarInfo) -> str:
    """The member's normalised relative name ('' for the archive root); refuses absolute
    paths, '..' components and backslashes before anything else looks at the member."""
    name = member.name
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise _Refused(f"member {name!r} has an absolute or non-POSIX path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"member {name!r} points outside the archive ('..')")
    return "/".join(parts)


def _iter_checked(tar: tarfile.TarFile) -> Any:
    """Yield (normalised name, member) for each regular file, after checking every header as
    it is met (count, name, type, size, duplicates), before its data is read or skipped."""
    seen: set[str] = set()
    total = 0
    count = 0
    while True:
        member = tar.next()
        if member is None:
            return
        count += 1
        if count > MAX_MEMBERS:
            raise _Refused(f"it has more than {MAX_MEMBERS} members")
        name = _member_name(member)
        if member.type == tarfile.DIRTYPE:
            continue
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
            kind = _TYPE_NAMES.get(member.type, f"an entry of tar type {member.type!r}")
            raise _Refused(f"member {member.name!r} is {kind}, not a regular file")
        if name in seen:
            raise _Refused(f"member {name!r} appears twice")
        seen.add(name)
        if member.size < 0 or member.size > MAX_MEMBER_BYTES:
            raise _Refused(f"member {name!r} declares {member.size} bytes")
        total += member.size
        if total > MAX_ARCHIVE_BYTES:
            raise _Refused(f"its members add up to more than {MAX_ARCHIVE_BYTES >> 30} GiB")
        yield name, member


def _read_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int
) -> bytearray | mmap.mmap:
    """The member's data, read in bounded blocks into one buffer of its declared size: no
    copies (the weights are the largest thing a model file holds), and anonymous memory that
    takes room only as it is filled (a member refused half-way has cost only that half)."""
    if member.size > limit:
        raise _Refused(f"member {member.name!r} declares {member.size} bytes (limit {limit})")
    handle = tar.extractfile(member)
    if handle is None:
        raise _Refused(f"member {member.name!r} cannot be read")
    data = mmap.mmap(-1, member.size) if member.size else bytearray()
    view = memoryview(data)
    done = 0
    while done < member.size:
        block = handle.read(min(_CHUNK, member.size - done))
        if not block:
            raise _Refused(f"member {member.name!r} is truncated")
        view[done : done + len(block)] = block
        done += len(block)
    view.release()
    return data


def read_nemo_archive(path: Path) -> NemoArchive:
    """Check every member of the ``.nemo`` archive at ``path`` and read its config and weights.

    Raises ModelError (one line, naming the file and the reason) when the file is missing,
    not a tar archive, hostile (links, devices, absolute or '..' paths, duplicates, absurd
    sizes or member counts) or lacks model_config.yaml / model_weights.ckpt.
    """
    config: bytearray | mmap.mmap | None = None
    weights: bytearray | mmap.mmap | None = None
    try:
        with open(path, "rb") as raw:
            stream = _open_stream(raw)
            with tarfile.open(fileobj=_BoundedReader(stream, raw), mode="r:") as tar:  # type: ignore[call-overload]
                for name, member in _iter_checked(tar):
                    if name == CONFIG_MEMBER:
                        config = _read_member(tar, member, MAX_CONFIG_BYTES)
                    elif name == WEIGHTS_MEMBER:
                        weights = _read_member(tar, member, MAX_WEIGHTS_BYTES)
    except _Refused as exc:
        raise ModelError(f"refusing NeMo archive {path}: {exc}") from None
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelError(f"{path} is a directory, not a .nemo archive") from None
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelError(f"{path} is not a readable .nemo archive: {reason}") from None
    if config is None:
        raise ModelError(f"{path} is not a NeMo model archive: it has no {CONFIG_MEMBER}")
    if weights is None:
        raise ModelError(
            f"{path} has no top-level {WEIGHTS_MEMBER} (model-parallel or distributed "
            "checkpoints are not supported)"
        )
    try:
        text = bytes(config).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"{path}: {CONFIG_MEMBER} is not UTF-8 text") from None
    return NemoArchive(text, weights)


def is_nemo_archive(path: Path) -> bool:
    """True when ``path`` is a tar archive (plain or gzip) with a top-level model_config.yaml.

    Decided by content, never by the file name; reads member headers only. Any error (missing,
    unreadable, not a tar) answers False; a hostile archive that has the config answers True,
    and loading it then refuses it with the reason.
    """
    try:
        with open(path, "rb") as raw:
            stream = _open_stream(raw)
            with tarfile.open(fileobj=_BoundedReader(stream, raw), mode="r:") as tar:  # type: ignore[call-overload]
                for _ in range(MAX_MEMBERS):
                    member = tar.next()
                    if member is None:
                        return False
                    parts = [p for p in member.name.split("/") if p not in ("", ".")]
                    if parts == [CONFIG_MEMBER]:
                        return True
    except Exception:  # any failure to read means "not a .nemo archive"
        return False
    return False


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only: no Python tags are ever constructed) that also
    reads exponent-only floats such as ``1e-05`` as numbers, as OmegaConf (which writes and
    reads NeMo configs) does; plain YAML 1.1 would read them as strings."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_config(text: str, source: str) -> dict[str, Any]:
    """The model config as plain Python data. A top-level ``model:`` wrapper is unwrapped as
    NeMo does. Raises ModelError for invalid YAML, tags or a non-mapping document."""
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass: plain data only
    except (yaml.YAMLError, RecursionError) as exc:
        reason = " ".join(str(exc).split())
        raise ModelError(f"{source}: {CONFIG_MEMBER} is not valid plain YAML: {reason}") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise ModelError(f"{source}: {CONFIG_MEMBER} is not a mapping")
    return data


def file_sha256(path: Path) -> str:
    """Hex sha256 of the whole file (the model's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
