"""Where a database lives: its URL, and where the vector-index cache of that database goes.

A SQLite database's cache is the file beside it (``<file>.faiss``, the path resolved, so
every spelling of it -- relative, through a symlink -- finds the same cache). A server
database's cache goes into a cache folder under a name derived from the database's own
identity, read from the database when it is opened (see
:mod:`speakerdb.storage._cache_files`), never from how its URL is spelled.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from speakerdb.errors import ConfigurationError

__all__ = [
    "DatabaseLocation",
    "default_index_folder",
    "default_sqlite_path",
    "index_folder",
    "mask_password",
    "resolve_location",
]

ENV_URL = "SPEAKERDB_URL"
ENV_INDEX_DIR = "SPEAKERDB_INDEX_DIR"

# "//user:" then everything up to the LAST "@" of the line: a password holding an unescaped
# "@" (or "/", or spaces) is masked whole. Over-masking is harmless; a leak is not.
_CREDENTIALS = re.compile(r"(//[^/:@\s]*:)(.*)@")
# A string that starts like a server URL but lacks "://" is a mistyped URL, not a file name
# (treating it as a SQLite path would create folders named after the password).
_URL_LIKE = re.compile(
    r"^(?:postgres(?:ql)?|mysql|mariadb|oracle|mssql)(?:\+\w+)?(?::|//)|^sqlite:", re.I
)


def mask_password(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` in it replaced by
    ``***``, whether or not the URL parses."""
    return _CREDENTIALS.sub(r"\1***@", text)


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def default_sqlite_path() -> Path:
    """``$XDG_DATA_HOME/speakerdb/speakerdb.sqlite`` (``~/.local/share/...`` by default)."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "speakerdb" / "speakerdb.sqlite"


@dataclass(frozen=True)
class DatabaseLocation:
    """A resolved database: SQLAlchemy URL, the SQLite file (if any) and the index cache path.

    ``index_path`` is None for in-memory SQLite, whose index lives in memory only, and for
    a server database until it is opened: its cache is named after the database's identity
    (:func:`speakerdb.storage._cache_files.placed`) in ``index_folder``.
    """

    url: URL
    sqlite_path: Path | None
    index_path: Path | None
    index_folder: Path | None = None

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @property
    def display(self) -> str:
        """The URL with any password hidden, for messages."""
        return self.url.render_as_string(hide_password=True)


def resolve_location(url: str | URL | os.PathLike[str] | None = None) -> DatabaseLocation:
    """Resolve what the user asked for into a database location.

    ``url``: a SQLAlchemy URL (``sqlite:///file``, ``postgresql+psycopg://...``; plain
    ``postgresql://`` means psycopg 3), a path to a SQLite file, or None for ``$SPEAKERDB_URL``
    or else the default SQLite file in the user data dir. Raises ConfigurationError.
    """
    if url is None:
        url = os.environ.get(ENV_URL) or None
    if url is None:
        return _sqlite_file(default_sqlite_path())
    if isinstance(url, os.PathLike):
        return _sqlite_file(Path(url))
    if isinstance(url, str) and "://" not in url:
        if _URL_LIKE.match(url.strip()):
            raise ConfigurationError(
                f"invalid database URL {mask_password(url)!r}: expected "
                "dialect+driver://user:password@host:port/database"
            )
        return _sqlite_file(Path(url))
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            return DatabaseLocation(parsed, None, None)
        return _sqlite_file(Path(database), parsed)
    if backend == "postgresql":
        if parsed.get_driver_name() in ("psycopg2", "postgresql") or "+" not in parsed.drivername:
            parsed = parsed.set(drivername="postgresql+psycopg")
        return DatabaseLocation(parsed, None, None, index_folder())
    raise ConfigurationError(
        f"unsupported database {backend!r}: use SQLite (a file path or sqlite:///...) or "
        "PostgreSQL (postgresql+psycopg://user@host/db)"
    )


def _parse(url: str | URL) -> URL:
    """A SQLAlchemy URL, or ConfigurationError with any password masked. SQLAlchemy raises
    ArgumentError for unparseable text and a bare ValueError for a non-numeric port."""
    if isinstance(url, URL):
        parsed = url
    else:
        if url.count("@") > 1:
            # Only one "@" separates the credentials from the host. With more, the parse is
            # a guess (SQLAlchemy ends the password at the first "@"): a password holding
            # "@0000/" parses as host "0000", and shown back it would spell the password.
            raise ConfigurationError(
                f"invalid database URL {mask_password(url)!r}: more than one '@' (a user "
                "name or password holding one must write it percent-encoded: %40)"
            )
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError, TypeError) as exc:
            reason = mask_password(" ".join(str(exc).split())) or type(exc).__name__
            raise ConfigurationError(
                f"invalid database URL {mask_password(str(url))!r}: {reason}"
            ) from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.host is not None and "@" in parsed.host:
        raise ConfigurationError(
            f"invalid database URL {mask_password(str(url))!r}: the user name or password "
            "holds an '@'; write it percent-encoded (%40)"
        )
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigurationError(f"invalid database URL {shown!r}: port {parsed.port} out of range")
    return parsed


def _sqlite_file(path: Path, url: URL | None = None) -> DatabaseLocation:
    path = path.expanduser().resolve()
    url = URL.create("sqlite", database=str(path)) if url is None else url.set(database=str(path))
    return DatabaseLocation(url, path, path.with_name(path.name + ".faiss"))


def default_index_folder() -> Path:
    """``$XDG_CACHE_HOME/speakerdb`` (``~/.cache/speakerdb`` by default)."""
    return _xdg("XDG_CACHE_HOME", ".cache") / "speakerdb"


def index_folder() -> Path:
    """Where this process keeps the index caches of server databases:
    ``$SPEAKERDB_INDEX_DIR``, else :func:`default_index_folder`."""
    override = os.environ.get(ENV_INDEX_DIR)
    return Path(override) if override else default_index_folder()
