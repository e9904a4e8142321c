"""The one exception tree: every class derives from SpeakerDBError, has its own code, and
renders as one printable line whatever it is given."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from speakerdb import errors
from speakerdb.errors import AudioError, SpeakerDBError, printable

ERROR_CLASSES = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]


def test_every_error_class_is_exported_and_derives_from_the_root():
    assert len(ERROR_CLASSES) >= 15
    for cls in ERROR_CLASSES:
        assert issubclass(cls, SpeakerDBError), cls
        assert cls.__name__ in errors.__all__, cls


def test_every_error_class_has_a_code_of_its_own():
    codes: dict[str, str] = {}
    for cls in ERROR_CLASSES:
        assert "code" in vars(cls), f"{cls.__name__} inherits its code"
        assert cls.code not in codes, f"{cls.__name__} and {codes[cls.code]} share {cls.code!r}"
        codes[cls.code] = cls.__name__
    # The two a JSON consumer most needs to tell apart.
    assert errors.AudioNotFoundError.code != errors.SpeakerNotFoundError.code


def _instance(cls: type[SpeakerDBError], text: str) -> SpeakerDBError:
    if issubclass(cls, AudioError):
        return cls(text, "a reason")
    if cls is errors.SpeakerNotFoundError:
        return cls(text)
    return cls(text)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
@given(text=st.text(max_size=40))
def test_messages_are_one_printable_line(cls, text):
    message = _instance(cls, text).message
    assert "\n" not in message and "\r" not in message
    assert message.isprintable()


@given(st.text(max_size=60))
def test_printable_is_one_line_and_reversible_in_length(text):
    shown = printable(text)
    assert shown.isprintable() and "\n" not in shown
    assert len(shown) >= len(text)


def test_printable_escapes_what_would_forge_output():
    assert printable("a\nerror: b.wav") == "a\\x0aerror: b.wav"
    assert printable("evil\u202egnp.wav") == "evil\\u202egnp.wav"
    assert printable("\x1b[31mred") == "\\x1b[31mred"
    assert printable("José and ünïcode") == "José and ünïcode"
