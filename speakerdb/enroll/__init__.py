"""The SpeakerDB facade: enroll, verify, compare, identify, manage, evaluate."""

from speakerdb.enroll.facade import RECOMMENDED_SPEECH_SECONDS, SpeakerDB
from speakerdb.enroll.reports import EnrollmentReport, InputReport

__all__ = ["RECOMMENDED_SPEECH_SECONDS", "EnrollmentReport", "InputReport", "SpeakerDB"]
