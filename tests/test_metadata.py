"""Issue 16, defect 7: speaker metadata is checked where it enters the library (a JSON
object of bounded depth and size, text UTF-8 can carry), so bad metadata changes nothing;
and metadata an earlier release stored unchecked never breaks a listing. SQLite and
PostgreSQL; the library and the CLI (HTTP: tests/test_service_store_safety.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from helpers import by_speaker, fake_model, fake_utterance, require_data
from speakerdb.cli import cli
from speakerdb.errors import UsageError
from speakerdb.storage._metadata import MAX_BYTES, MAX_DEPTH
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore

MODEL = fake_model()


def nested(levels: int) -> dict:
    """{"a": {"a": ... {}}}: ``levels`` objects inside one another (built without recursion)."""
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def nested_text(levels: int) -> str:
    return '{"a": ' * (levels - 1) + "{}" + "}" * (levels - 1)


BAD = {
    "lone surrogate": {"a": "\ud800"},
    "lone surrogate in a key": {"\udcff": 1},
    "lone surrogate deep inside": {"a": [{"b": ["ok", "\udfff"]}]},
    "900 levels": nested(900),
    "50 000 levels": nested(50_000),
    "one level too many": nested(MAX_DEPTH + 1),
    "too large": {"a": "x" * MAX_BYTES},
    "NaN": {"a": float("nan")},
    "not JSON": {"a": object()},
    "a key that is not text": {1: "a"},
    "not an object": ["a"],
    "a number of 5000 digits": {"a": 10**4999},
}


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _rows(url: str) -> list:
    engine = create_engine(make_url(url))
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    text("SELECT name, CAST(metadata AS TEXT), change_seq FROM speakers ORDER BY 1")
                )
            )
    finally:
        engine.dispose()


def test_bad_metadata_is_refused_and_changes_nothing(db_url, rng):
    with EnrollmentStore.open(db_url) as store:
        store.enroll(EnrollRequest("bob", [fake_utterance(rng)], metadata={"a": 1}), MODEL)
        before = _rows(db_url)
        for kind, metadata in BAD.items():
            for request in (
                EnrollRequest("bob", [fake_utterance(rng)], metadata=metadata),
                EnrollRequest("newcomer", [fake_utterance(rng)], metadata=metadata),
            ):
                with pytest.raises(UsageError, match="metadata"):
                    store.enroll(request, MODEL)
            with pytest.raises(UsageError, match="metadata"):
                store.set_metadata("bob", metadata)
            assert _rows(db_url) == before, kind
        # At the limits, and ordinary text (also outside the BMP, and NUL) are fine.
        good = {
            "deep": nested(MAX_DEPTH - 1),
            "text": "Zoë \U0001f600 \x00 \\ud800 (escaped, as text)",
            "n": [1, 2.5, None, True],
        }
        assert store.set_metadata("bob", good).metadata == good
        assert store.speaker("bob").metadata == good


def _store_raw(url: str, name: str, raw: str) -> None:
    """Write metadata text as an earlier release could have (no checks)."""
    engine = create_engine(make_url(url))
    try:
        with engine.begin() as conn:
            cast = "CAST(:raw AS json)" if engine.dialect.name == "postgresql" else ":raw"
            conn.execute(
                text(f"UPDATE speakers SET metadata = {cast} WHERE name = :name"),
                {"raw": raw, "name": name},
            )
    finally:
        engine.dispose()


def test_listing_survives_bad_metadata_stored_by_an_earlier_release(db_url, rng):
    names = ["alice", "bob", "carol", "dave"]
    with EnrollmentStore.open(db_url) as store:
        for name in names:
            store.enroll(EnrollRequest(name, [fake_utterance(rng)], metadata={"team": name}), MODEL)
    _store_raw(db_url, "bob", '{"a": "\\ud800"}')
    _store_raw(db_url, "carol", nested_text(900))
    if not db_url.startswith("postgresql"):  # PostgreSQL's json type refuses it
        _store_raw(db_url, "dave", '{"a": ')
    with EnrollmentStore.open(db_url, read_only=True) as store:
        records = {r.name: r for r in store.speakers()}
        assert sorted(records) == names
        assert records["alice"].metadata == {"team": "alice"}
        assert records["alice"].metadata_error is None
        assert "metadata_error" not in records["alice"].to_dict()
        assert records["bob"].metadata is None and "surrogate" in records["bob"].metadata_error
        assert records["carol"].metadata is None and "deeper" in records["carol"].metadata_error
        assert store.speaker("bob").metadata_error == records["bob"].metadata_error

    runner = CliRunner()
    listing = runner.invoke(cli, ["speakers", "list", "--json", "--db", db_url])
    assert listing.exit_code == 0, listing.output
    shown = {s["name"]: s for s in json.loads(listing.stdout)}
    assert shown["alice"]["metadata"] == {"team": "alice"}
    assert shown["bob"]["metadata"] is None and shown["bob"]["metadata_error"]
    for name in names:
        for extra in ([], ["--json"]):
            result = runner.invoke(cli, ["speakers", "show", name, *extra, "--db", db_url])
            assert result.exit_code == 0 and "internal error" not in result.output, result.output
    text_show = runner.invoke(cli, ["speakers", "show", "carol", "--db", db_url])
    assert "metadata: not shown (stored metadata is nested deeper" in text_show.stdout
    # A good value replaces the bad one.
    with EnrollmentStore.open(db_url) as store:
        assert store.set_metadata("bob", {"fixed": True}).metadata == {"fixed": True}


def test_cli_meta_with_undecodable_bytes_is_refused(db_url):
    """On Linux, bytes of an argument that are not UTF-8 reach Python as lone surrogates."""
    require_data()
    first, second = (str(p) for p in by_speaker("vctk")["p225"][:2])
    runner = CliRunner()
    result = runner.invoke(cli, ["enroll", "bob", first, "--meta", "a=b", "--db", db_url])
    assert result.exit_code == 0, result.output
    before = _rows(db_url)
    for file in (first, second):
        argv = ["enroll", "bob", file, "--meta", "a=\udcff", "--db", db_url]
        result = runner.invoke(cli, argv)
        assert result.exit_code == 2 and "metadata" in result.stderr, result.output
        assert "Traceback" not in result.output
    assert _rows(db_url) == before
    listing = runner.invoke(cli, ["speakers", "list", "--json", "--db", db_url])
    assert listing.exit_code == 0, listing.output
    assert [s["metadata"] for s in json.loads(listing.stdout)] == [{"a": "b"}]
