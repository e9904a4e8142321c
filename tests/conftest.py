from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import settings as hypothesis_settings

# CI (.ci/run) draws the same examples on every run, so that a red run is a change's doing and
# not a new random draw; `make test` elsewhere draws afresh and finds what is new (a failure it
# finds becomes an @example). Loaded here, before any test module builds its @settings.
hypothesis_settings.register_profile("ci", derandomize=True)
if os.environ.get("SPEAKERDB_HYPOTHESIS_PROFILE"):
    hypothesis_settings.load_profile(os.environ["SPEAKERDB_HYPOTHESIS_PROFILE"])


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_dirs(tmp_path_factory):
    """Never touch the real user's default database or index cache."""
    root = tmp_path_factory.mktemp("user-dirs")
    saved = {k: os.environ.get(k) for k in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "SPEAKERDB_URL")}
    os.environ["XDG_DATA_HOME"] = str(root / "data")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    os.environ.pop("SPEAKERDB_URL", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def model():
    """The bundled GE2E model on CPU (loaded once per test session)."""
    from speakerdb import load_model

    return load_model(device="cpu")


# --- databases ---------------------------------------------------------------------------------

PG_URL = os.environ.get(
    "SPEAKERDB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("SPEAKERDB_REQUIRE_PG") == "1"


@pytest.fixture(scope="session")
def pg_admin():
    """An engine on the PostgreSQL server used for tests; skipped (or, with
    SPEAKERDB_REQUIRE_PG=1, failed) when none answers."""
    try:
        import psycopg  # noqa: F401
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the server
        reason = f"PostgreSQL not reachable at {PG_URL} ({type(exc).__name__}: {exc})"
        if REQUIRE_PG:
            pytest.fail(reason + " and SPEAKERDB_REQUIRE_PG=1")
        pytest.skip(reason)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin, tmp_path, monkeypatch):
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"speakerdb_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("SPEAKERDB_INDEX_DIR", str(tmp_path / "index-cache"))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'speakers.sqlite'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same test on a fresh SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'speakers.sqlite'}"
    return request.getfixturevalue("pg_url")
