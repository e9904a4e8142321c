"""Speaker names: names that look the same are the same name (Unicode NFC, no surrounding
space), invisible and control characters are refused, and every lookup normalises the same
way. Hypothesis properties on the rule and on a real store; examples on both databases and
through the CLI."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import fake_model, fake_utterance
from speakerdb.cli import cli
from speakerdb.errors import SpeakerNotFoundError, UsageError
from speakerdb.storage._records import EnrollRequest
from speakerdb.storage._store import EnrollmentStore, validated_name

MODEL = fake_model()
REFUSED = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}

JOSE_NFC = "Jos\u00e9"
JOSE_NFD = "Jose\u0301"
INVISIBLE_OR_CONTROL = [
    "Jos\u00e9\u200b",  # zero-width space
    "ev\u202eil",  # right-to-left override
    "a\u0085b",  # NEL, a C1 control
    "a\u2028b",  # line separator
    "a\u2029b",  # paragraph separator
    "a\u009bb",  # CSI, a C1 control
    "a\u200db",  # zero-width joiner
    "\ufeffbom",  # byte order mark
    "a\ue000b",  # private use
    "a\udcffb",  # lone surrogate (an undecodable byte of a command-line argument)
    "a\x07b",
    "a\x7fb",
]


@pytest.fixture
def rng():
    return np.random.default_rng(14)


def _enroll(store, name, rng, n=1):
    return store.enroll(EnrollRequest(name, [fake_utterance(rng) for _ in range(n)]), MODEL)


# --- the rule --------------------------------------------------------------------------------


@given(st.text(max_size=40))
def test_a_valid_name_is_canonical_and_visible(text):
    try:
        name = validated_name(text)
    except UsageError:
        return
    assert name == unicodedata.normalize("NFC", name) == name.strip()
    assert 0 < len(name) <= 255
    assert not any(unicodedata.category(c) in REFUSED for c in name)
    assert validated_name(name) == name  # idempotent


@given(st.text(max_size=40))
def test_canonically_equivalent_spellings_are_one_name(text):
    try:
        name = validated_name(text)
    except UsageError:
        with pytest.raises(UsageError):
            validated_name(unicodedata.normalize("NFD", text))
        return
    for variant in ("NFD", "NFC"):
        assert validated_name(unicodedata.normalize(variant, text)) == name
    assert validated_name(f"  {text}\t") == name


@given(
    st.text(min_size=1, max_size=10),
    st.characters(whitelist_categories=("Cc", "Cf", "Zl", "Zp", "Co", "Cs")),
    st.text(min_size=1, max_size=10),
)
def test_an_invisible_or_control_character_inside_is_refused(head, bad, tail):
    with pytest.raises(UsageError):
        validated_name(f"x{head}{bad}{tail}x")


@pytest.mark.parametrize("name", INVISIBLE_OR_CONTROL)
def test_refused_names(name):
    with pytest.raises(UsageError, match="control or invisible"):
        validated_name(name)


# --- the store: the same normalisation on every lookup -----------------------------------------


def test_nfc_nfd_and_padded_spellings_reach_one_speaker(db_url, rng):
    with EnrollmentStore.open(db_url) as store:
        created = _enroll(store, JOSE_NFD, rng)
        assert created.speaker.name == JOSE_NFC
        again = _enroll(store, f"  {JOSE_NFC} ", rng)
        assert not again.created and again.speaker.id == created.speaker.id
        assert [s.name for s in store.speakers()] == [JOSE_NFC]
        for spelling in (JOSE_NFC, JOSE_NFD, f" {JOSE_NFD}  "):
            assert store.speaker(spelling).id == created.speaker.id
            assert store.centroid(spelling)[0].utterances == 2
            assert len(store.utterances(spelling)) == 2
            assert store.utterance_embeddings(spelling).shape == (2, 16)
            assert store.speaker_records([spelling])[spelling].id == created.speaker.id
            assert len(store.existing_hashes([spelling])[spelling]) == 2
        store.set_metadata(JOSE_NFD, {"team": "a"})
        assert store.speaker(JOSE_NFC).metadata == {"team": "a"}
        store.rename_speaker(f"  {JOSE_NFD}", "  Zoe\u0308 ")
        assert store.speaker("Zo\u00eb").id == created.speaker.id
        for name in INVISIBLE_OR_CONTROL:
            with pytest.raises(UsageError):
                _enroll(store, name, rng)
            with pytest.raises(UsageError):
                store.rename_speaker("Zo\u00eb", name)
        store.delete_speaker("Zoe\u0308")
        with pytest.raises(SpeakerNotFoundError):
            store.speaker("Zo\u00eb")


_names = st.text(
    alphabet=st.characters(
        whitelist_categories=("Lu", "Ll", "Mn", "Nd", "Zs", "Po"), max_codepoint=0x2FFF
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=_names)
def test_every_spelling_of_an_enrolled_name_finds_it(tmp_path, name):
    try:
        canonical = validated_name(name)
    except UsageError:
        return
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    with EnrollmentStore.open(tmp_path / "names.sqlite") as store:
        speaker = _enroll(store, unicodedata.normalize("NFD", name), rng).speaker
        assert speaker.name == canonical
        for spelling in (name, unicodedata.normalize("NFD", name), f" {name} ", canonical):
            assert store.speaker(spelling).id == speaker.id
        assert sum(s.name == canonical for s in store.speakers()) == 1


# --- through the CLI ----------------------------------------------------------------------------


def test_speakers_list_prints_one_line_per_speaker(tmp_path, rng):
    db = str(tmp_path / "list.sqlite")
    names = [f"speaker {i}" for i in range(10)]
    with EnrollmentStore.open(db) as store:
        for name in names:
            _enroll(store, name, rng)
        for name in INVISIBLE_OR_CONTROL:
            with pytest.raises(UsageError):
                _enroll(store, f"speaker {name}", rng)
    result = CliRunner().invoke(cli, ["speakers", "list", "--db", db])
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 10
    shown = CliRunner().invoke(cli, ["speakers", "show", "  speaker 3 ", "--db", db, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["name"] == "speaker 3"


def test_enroll_and_verify_agree_on_a_padded_decomposed_name(tmp_path):
    from helpers import by_speaker

    files = [str(p) for p in by_speaker("vctk")["p225"]]
    db = str(tmp_path / "cli.sqlite")
    enrolled = CliRunner().invoke(cli, ["enroll", f"  {JOSE_NFD}  ", *files[:3], "--db", db])
    assert enrolled.exit_code == 0, enrolled.output
    for spelling in (f"  {JOSE_NFD}  ", JOSE_NFC, JOSE_NFD):
        verified = CliRunner().invoke(cli, ["verify", spelling, files[5], "--db", db, "--json"])
        assert verified.exit_code == 0, verified.output
        assert json.loads(verified.stdout)["speaker"] == JOSE_NFC
