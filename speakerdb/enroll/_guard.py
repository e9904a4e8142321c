"""Who may change an enrolled voiceprint: the rules that stop an identity being taken over.

- **Overwrite** replaces every recording of a speaker: for the voiceprint, a delete and a
  new enrollment, which only an administrator may do. The library asks for it explicitly
  (``force=True``; the CLI's ``--force``; over HTTP an admin key).
- **Append** to an existing speaker is checked against the speaker's voiceprint as it was
  before the request -- not against the mean of everything, which the new recordings would
  already pull their way: each new recording is scored against that voiceprint with the
  decision rule the database verifies that speaker with (its calibration and operating
  point, the recording's and the voiceprint's quality), and the request is refused -- none
  of its recordings stored, nor its metadata -- if any new recording is rejected. The
  check runs inside the enrolling transaction (:class:`AppendGuard` is called by the store
  with the speaker's row locked), so no concurrent enrollment can slip in between the
  check and the write. ``force=True`` skips it.

Refusing the whole request rather than storing the recordings that match keeps a request
atomic (it is stored as sent, or not at all) and does not let a mixed request through in
part; the report says which recordings did not match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from speakerdb.decisions import Decision, DecisionPolicy, Side
from speakerdb.enroll._reports import EnrollmentReport
from speakerdb.errors import EnrollmentRefusedError, UsageError
from speakerdb.scoring import cosine
from speakerdb.storage._records import NewUtterance, SpeakerRecord

__all__ = ["AppendGuard", "check_overwrite", "refusal"]

MISMATCH = "voiceprint_mismatch"
WITH_THE_OTHERS = "refused_with_request"


def check_overwrite(mode: str, force: bool, whose: str) -> None:
    """Raise UsageError for mode "overwrite" without ``force``. ``whose``: the speakers
    concerned, for the message ("'bob'")."""
    if mode == "overwrite" and not force:
        raise UsageError(
            f"mode overwrite replaces every recording of {whose}, as deleting them would: "
            "it needs force=True (CLI: --force; HTTP: an admin key)"
        )


@dataclass(frozen=True)
class Verdict:
    """One new recording of an append, decided against the voiceprint before it."""

    sha256: str
    decision: Decision


class AppendGuard:
    """Decides appends to existing speakers with ``policy`` (the database's rule for raw
    scores). Called by the store as ``guard(speaker before, its (D,) centroid, the new
    utterances)``; returns whether the append may go in, and keeps each recording's verdict
    per speaker name (the store may call it again when it retries a transaction: the last
    call counts)."""

    def __init__(self, policy: DecisionPolicy) -> None:
        self._policy = policy
        self.verdicts: dict[str, list[Verdict]] = {}

    def __call__(
        self,
        before: SpeakerRecord,
        centroid: npt.NDArray[np.float32],
        added: Sequence[NewUtterance],
    ) -> bool:
        cosines = [cosine(u.embedding, centroid) for u in added]
        enrolled = Side(before.speech_seconds, before.utterances, before.bandwidth_hz)
        decisions = self._policy.decide(
            cosines,
            cosines,
            [Side(u.speech_seconds, 1, u.bandwidth_hz) for u in added],
            [enrolled] * len(added),
        )
        self.verdicts[before.name] = [
            Verdict(u.sha256, d) for u, d in zip(added, decisions, strict=True)
        ]
        return all(d.accepted for d in decisions)

    def mark_refused(self, report: EnrollmentReport) -> None:
        """Mark the recordings of a refused append in ``report``: those that did not match
        with their score, the others as refused with them. Nothing was stored."""
        verdicts = {v.sha256: v.decision for v in self.verdicts.get(report.speaker, [])}
        report.changed = report.created = False
        report.net_speech_seconds = 0.0
        for item in report.inputs:
            if item.status != "accepted":
                continue
            item.status = "refused"
            decision = verdicts.get(item.sha256 or "")
            if decision is None:
                item.reason, item.message = WITH_THE_OTHERS, "refused with the request"
                continue
            rule = decision.rule
            shown = (
                f"{decision.score:.3f} ({rule.score}) against the voiceprint of {report.speaker!r}"
            )
            if decision.accepted:
                item.reason = WITH_THE_OTHERS
                item.message = f"matches, scoring {shown}, but was refused with the request"
            else:
                item.reason = MISMATCH
                item.message = (
                    f"does not match: scores {shown}, below the threshold {rule.threshold:.3f}"
                )


def refusal(report: EnrollmentReport) -> EnrollmentRefusedError:
    """The error of a refused append (``report`` marked by :meth:`AppendGuard.mark_refused`)."""
    mismatched = [i for i in report.inputs if i.reason == MISMATCH]
    listed = "; ".join(f"{i.source} {i.message}" for i in mismatched[:3])
    more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
    return EnrollmentRefusedError(
        f"refused to add {report.refused} recordings to {report.speaker!r}, nothing stored: "
        f"{len(mismatched)} do not match its voiceprint: {listed}{more}; an administrator "
        "may add them anyway (force=True, CLI --force, HTTP force with an admin key)",
        report,
    )
