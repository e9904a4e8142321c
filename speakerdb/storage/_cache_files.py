"""Which vector-index cache files belong to a database, however it is reached.

A database's *identity* tells its caches apart from every other database's, whatever URL
or path reaches it: the random ``store_state.instance_id`` each database got when it was
created (revision 0001), together with where its data lives -- for PostgreSQL the server's
system identifier and the database's oid, for SQLite the file's device and inode number.
The second part is there because a copy (a restored dump, a copied file) keeps the
instance id but is another database from then on, whose cache must not be mixed up with
the original's.

- A server database's cache is named after its identity (one file per database in a cache
  folder, whatever the host name, address, port spelling or user of the URL); a SQLite
  database's cache stays beside its file (the path resolved: a relative path or a symlink
  finds the same file).
- Every index file records the identity in its header. After a delete, a compact or a
  rebuild, the *other* files of the same database found on this machine are erased: those
  left under another name by an earlier speakerdb (which named server caches after the
  URL), in the other cache folder (``$SPEAKERDB_INDEX_DIR`` against the default one), or
  beside a SQLite file's old name (moved, or hard-linked). ``db check`` lists them and
  reports those holding a voiceprint of a deleted speaker.

Searched: the folder of a SQLite file; for a server database, this process's cache folder,
the default one, and every cache folder a process of this user has kept a server
database's cache in (each is recorded in the default folder's ``folders`` file when first
used). Other users' cache folders are out of reach (and of sight).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from speakerdb.storage._index_file import folder_lock, read_header
from speakerdb.storage._location import DatabaseLocation, default_index_folder

__all__ = [
    "database_identity",
    "erase_other_caches",
    "other_cache_files",
    "placed",
    "remember_folder",
]

log = logging.getLogger(__name__)

MAX_SCANNED = 10_000
"""Files looked at per folder when searching a database's other caches (a bound on the
work of a delete in a crowded folder)."""
MAX_FOLDERS = 100
"""Cache folders remembered in the default folder's ``folders`` file (the most recent)."""
_SUFFIX = ".faiss"
_FOLDERS_FILE = "folders"


def database_identity(engine: Engine, location: DatabaseLocation, instance_id: str) -> str:
    """The identity of the open database at ``location`` whose ``instance_id`` was read
    from it ("" for in-memory SQLite, which has no cache file). Raises SQLAlchemyError
    (PostgreSQL) and OSError (SQLite) for the caller to translate."""
    if location.sqlite_path is not None:
        st = os.stat(location.sqlite_path)
        return f"sqlite:{st.st_dev}:{st.st_ino}:{instance_id}"
    if location.dialect != "postgresql":
        return ""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT d.oid, has_function_privilege("
                "'pg_catalog.pg_control_system()', 'EXECUTE') AS allowed "
                "FROM pg_catalog.pg_database d WHERE d.datname = current_database()"
            )
        ).one()
        system = None
        if row.allowed:
            system = conn.execute(
                text("SELECT system_identifier FROM pg_catalog.pg_control_system()")
            ).scalar()
        conn.rollback()
    # Without the system identifier (a server that withholds it), two copies of one
    # database with the same oid on two servers would share a cache file: it is still
    # checked against each database's change counter, and every answer re-read from SQL.
    return f"postgresql:{system if system is not None else '-'}:{row.oid}:{instance_id}"


def placed(location: DatabaseLocation, identity: str) -> DatabaseLocation:
    """``location`` with the index path of a server database, named after ``identity``
    (unchanged for SQLite, whose cache sits beside its file)."""
    if location.index_folder is None or not identity:
        return location
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return dataclasses.replace(location, index_path=location.index_folder / f"db-{digest}{_SUFFIX}")


def other_cache_files(location: DatabaseLocation, identity: str, instance_id: str) -> list[Path]:
    """Index files of this database other than ``location.index_path``, in the folders
    searched (see the module docstring), sorted. Only headers are read."""
    own = location.index_path
    found: list[Path] = []
    for folder in _folders(location):
        try:
            candidates = list(itertools.islice(folder.glob(f"*{_SUFFIX}"), MAX_SCANNED))
        except OSError:
            continue
        for path in candidates:
            if (own is not None and _same_file(path, own)) or path.is_symlink():
                continue
            if not path.is_file():
                continue
            header = read_header(path)
            if header is None or header.instance_id != instance_id:
                continue
            if header.database:
                ours = header.database == identity
            else:
                ours = _unmarked_is_ours(path, location)
            if ours:
                found.append(path)
    return sorted(found)


def erase_other_caches(location: DatabaseLocation, identity: str, instance_id: str) -> list[Path]:
    """Delete :func:`other_cache_files` (each under its folder's lock, so that no writer is
    replacing it meanwhile). Returns those deleted; one that cannot be is logged."""
    erased: list[Path] = []
    for path in other_cache_files(location, identity, instance_id):
        try:
            with folder_lock(path.parent):
                path.unlink(missing_ok=True)
            erased.append(path)
        except OSError as exc:
            log.warning("cannot erase the index cache %s: %s", path, exc.strerror or exc)
    return erased


def remember_folder(location: DatabaseLocation) -> None:
    """Record a server database's cache folder, when it is not the default one, in the
    default folder's ``folders`` file, so that a delete in any process of this user finds
    the caches kept there. Best effort: a folder that cannot be recorded is logged."""
    folder = location.index_folder
    default = default_index_folder()
    if location.sqlite_path is not None or folder is None or _same_file(folder, default):
        return
    entry = str(folder.absolute())
    try:
        default.mkdir(parents=True, exist_ok=True, mode=0o700)
        with folder_lock(default):
            known = _remembered(default)
            if entry in known:
                return
            alive = [f for f in known if Path(f).is_dir()]
            kept = [*alive[-(MAX_FOLDERS - 1) :], entry]
            registry = default / _FOLDERS_FILE
            temp = registry.with_name(f".{_FOLDERS_FILE}.{os.getpid()}.tmp")
            temp.write_text("".join(f + "\n" for f in kept), encoding="utf-8")
            temp.chmod(0o600)
            os.replace(temp, registry)
    except OSError as exc:
        log.warning("cannot record the index cache folder %s: %s", folder, exc.strerror or exc)


def _remembered(default: Path) -> list[str]:
    try:
        text = (default / _FOLDERS_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [line for line in text.splitlines() if line.startswith("/")][-MAX_FOLDERS:]


def _folders(location: DatabaseLocation) -> list[Path]:
    if location.sqlite_path is not None:
        return [location.sqlite_path.parent]
    if location.index_folder is None:
        return []
    default = default_index_folder()
    folders: list[Path] = []
    for folder in [location.index_folder, default, *map(Path, _remembered(default))]:
        if not any(_same_file(folder, seen) for seen in folders):
            folders.append(folder)
    return folders


def _unmarked_is_ours(path: Path, location: DatabaseLocation) -> bool:
    """A file written before identities were recorded, naming this database's instance id:
    ours, unless it sits beside another SQLite file (a copy of this database, whose own
    cache it is)."""
    if location.sqlite_path is None:
        return path.name.startswith("index-")  # the URL-named caches of earlier releases
    beside = path.with_name(path.name[: -len(_SUFFIX)])
    return not beside.exists() or _same_file(beside, location.sqlite_path)


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return a.samefile(b)
    return a.absolute() == b.absolute()
