"""SpeakerDB's enrollment verbs: one speaker's recordings (:meth:`EnrollVerbs.enroll`) or a
manifest of many (:meth:`EnrollVerbs.enroll_manifest`), appends checked against the enrolled
voiceprint first (:mod:`._guard`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from speakerdb.enroll._base import (
    FacadeBase,
    Progress,
    as_list,
    enroll_mode,
)
from speakerdb.enroll._enrollment import (
    ManifestEnrollment,
    apply_result,
    finish_report,
    set_totals,
    sort_inputs,
)
from speakerdb.enroll._guard import AppendGuard, check_overwrite, refusal
from speakerdb.enroll._lists import ManifestEntry
from speakerdb.enroll._ray_batch import RayOptions, check_database, ray_iter_embed, ray_options
from speakerdb.enroll._reports import EnrollmentReport, InputReport, ManifestSummary
from speakerdb.errors import OptedOutError, UsageError
from speakerdb.model._audio import AudioInput, source_label
from speakerdb.storage._governance import expires_at_after
from speakerdb.storage._metadata import validated_metadata
from speakerdb.storage._records import (
    EnrollRequest,
)
from speakerdb.storage._schema import utcnow
from speakerdb.storage._store import validated_name

if TYPE_CHECKING:
    pass


__all__ = ["EnrollVerbs"]


class EnrollVerbs(FacadeBase):
    """The enrollment verbs of :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    # --- enrollment ---------------------------------------------------------------------------

    def enroll(
        self,
        name: str,
        audio: AudioInput | Sequence[AudioInput],
        *,
        mode: str = "append",
        metadata: dict[str, Any] | None = None,
        sample_rate: int | None = None,
        progress: Progress | None = None,
        force: bool = False,
        expires_after: str | dt.timedelta | None = None,
        consent: str | None = None,
    ) -> EnrollmentReport:
        """Enroll recordings of one speaker.

        audio: a path or array, or a list of them (arrays need ``sample_rate``). mode:
        "append" (add; create if new), "overwrite" (replace the speaker's recordings; needs
        ``force``), "skip" (leave an existing speaker untouched). Unusable recordings are
        rejected in the report without stopping the others; already-enrolled audio is
        reported as a duplicate. If nothing is accepted the database is not changed at all.

        Appending to an enrolled speaker: every new recording is first verified against the
        speaker's voiceprint as it was before this call, with the database's decision rule;
        if any is rejected, nothing is stored and EnrollmentRefusedError is raised (its
        ``report`` says which; see :mod:`speakerdb.enroll._guard`). ``force``: the
        administrator's override -- overwrite, and append without that check. Where the
        database records a spoofing countermeasure, a recording it detects as an attack is
        rejected (reason ``spoof_detected``), like any other unusable recording.

        expires_after: retention from now ("3y", "90d", "2w", "12h" or a timedelta):
        ``speakerdb db expire`` (:meth:`expire`) erases the speaker after it. consent: the
        consent given (text), recorded with the time and the actor (see
        :func:`speakerdb.acting_as`). Both replace what an enrolled speaker had; None
        leaves it.

        Raises UsageError (bad name/mode/metadata/period, overwrite without force),
        OptedOutError (the name was opted out), ConsentRequiredError (the database requires
        consent), EnrollmentRefusedError, ModelMismatchError, StoreError.
        """
        name = validated_name(name)
        expires_at = expires_at_after(expires_after, utcnow())
        if self.store.opted_out([name]):  # before any embedding; the store checks again
            raise OptedOutError(
                f"{name!r} was opted out and cannot be enrolled (an administrator can lift "
                "it: speakerdb speakers opt-in NAME)"
            )
        checked_mode = enroll_mode(mode)
        validated_metadata(metadata)
        check_overwrite(checked_mode, force, repr(name))
        inputs = as_list(audio)
        if not inputs:
            raise UsageError(f"no recordings given to enroll {name!r}")
        identity = self._check_model()
        report = EnrollmentReport(speaker=name, mode=checked_mode)
        if checked_mode == "skip":
            existing = self.store.speaker_records([name]).get(name)
            if existing is not None:
                report.inputs = [InputReport(source_label(a), "skipped") for a in inputs]
                set_totals(report, existing)
                return finish_report(report, None, self.threshold)
        known = self.store.existing_hashes([name])[name] if checked_mode == "append" else set()
        cm = self._database_countermeasure()
        results = self.model.embed(
            inputs,
            sample_rate=sample_rate,
            progress=progress,
            skip=lambda _i, sha: sha in known,
            head_samples=cm.input_samples if cm else 0,
        )
        if cm is not None:
            from speakerdb.enroll._spoof import refuse_spoofs

            results = refuse_spoofs(cm, inputs, results, sample_rate)
        accepted = sort_inputs(report, results, known)
        if not accepted:
            set_totals(report, self.store.speaker_records([name]).get(name))
            return finish_report(report, None, self.threshold)
        guard = None if force else AppendGuard(self.decision_policy())
        result = self.store.enroll(
            EnrollRequest(
                name, accepted, checked_mode, metadata, expires_at=expires_at, consent=consent
            ),
            identity,
            guard,
        )
        if result.refused and guard is not None:
            guard.mark_refused(report)
            set_totals(report, result.speaker)
            raise refusal(report)
        apply_result(report, result)
        return finish_report(report, result, self.threshold)

    def enroll_manifest(
        self,
        entries: Sequence[ManifestEntry],
        *,
        mode: str = "append",
        progress: Progress | None = None,
        batch_size: int | None = None,
        force: bool = False,
        ray: RayOptions | str | None = None,
    ) -> ManifestSummary:
        """Enroll many speakers from manifest entries in one pass (batched embedding).

        Speakers are committed as soon as all their recordings are embedded, several per
        transaction, so an interrupted run keeps what it finished and a rerun skips the
        already-enrolled audio (decoded to recognise it, not re-embedded). Reports come in the
        order each speaker first appears. Appends to enrolled speakers are checked as in
        :meth:`enroll`: a speaker whose new recordings do not match gets nothing of this run
        (its report marks them "refused"), the others go ahead. ``force``: as in
        :meth:`enroll` (needed for mode overwrite).

        ray: decode and embed on a Ray cluster (an address, "local" or "auto", or
        :class:`RayOptions`; extra ``speakerdb[ray]``); results are committed here exactly as
        without it. SQLite only with "local": a cluster's job needs PostgreSQL.
        """
        checked_mode = enroll_mode(mode)
        check_overwrite(checked_mode, force, "the manifest's speakers")
        options = None if ray is None else ray_options(ray)
        if options is not None:
            location = self.store.location
            check_database(options, location.dialect, location.display)
        guard = None if force else AppendGuard(self.decision_policy(None))
        identity = self._check_model()
        run = ManifestEnrollment(self.store, identity, entries, checked_mode, self.threshold, guard)
        paths = [entry.path for entry in entries]
        cm = self._database_countermeasure()
        sizes = {"batch_size": batch_size} if batch_size else {}
        head_samples = cm.input_samples if cm else 0
        if options is None:
            stream = self.model.iter_embed(paths, skip=run.skip, head_samples=head_samples, **sizes)
        else:
            stream = ray_iter_embed(
                options,
                identity,
                [str(p) for p in paths],
                [run.known_for(i) for i in range(len(paths))],
                head_samples=head_samples,
                batch_size=batch_size,
            )
        for done, (index, result) in enumerate(stream, start=1):
            if cm is not None:
                from speakerdb.enroll._spoof import refuse_spoofs

                result = refuse_spoofs(cm, [paths[index]], [result])[0]
            run.add(index, result)
            if progress is not None:
                progress(done, len(paths))
        run.flush()
        return ManifestSummary(files=len(entries), reports=run.ordered_reports())
