"""What every verb of :class:`~speakerdb.enroll._facade.SpeakerDB` stands on: the database
(optional), the embedding model resolved and loaded on first use, and how this database
decides (:meth:`FacadeBase.decision_policy`). The verbs live in mixins over this base, one
module per job (enroll, decide, diarize, evaluate, calibrate, administer).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Self, cast

import numpy as np

from speakerdb._calibration import DEFAULT_OPERATING_POINT
from speakerdb._identity import ModelIdentity
from speakerdb.decisions import (
    DEFAULT_COHORT_SIZE,
    DecisionOptions,
    DecisionPolicy,
    Side,
    resolve_policy,
)
from speakerdb.enroll._cohort import Cohorts, normalization
from speakerdb.errors import AudioError, DatabaseNotFoundError, ModelNotFoundError, UsageError
from speakerdb.model._audio import AudioInput
from speakerdb.model._registry import ModelSpec, identity_threshold, model_identity, resolve_model
from speakerdb.storage._records import ENROLL_MODES, EnrollMode
from speakerdb.storage._store import EnrollmentStore

if TYPE_CHECKING:
    import torch

    from speakerdb.model._countermeasure import Countermeasure
    from speakerdb.model._embedder import EmbeddedAudio, Embedder

__all__ = [
    "FacadeBase",
    "Progress",
    "as_list",
    "enroll_mode",
    "error_of",
    "options_of",
    "prior_or_default",
    "reported_far",
    "side_of",
    "vector_of",
]

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while recordings are embedded."""


class FacadeBase:
    """The state a SpeakerDB holds: its store (or none), its model (loaded once, on first
    use) and the AS-norm cohorts; see :class:`~speakerdb.enroll._facade.SpeakerDB`."""

    def __init__(
        self,
        store: EnrollmentStore | None,
        model: str | os.PathLike[str] | Embedder | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self._store = store
        self._device = device
        self._embedder: Embedder | None = None
        self._spoof_cache: dict[str, Countermeasure] = {}  # by weights sha256
        # Threads of a server may ask for the model at once: it is loaded only once.
        self._model_lock = threading.Lock()
        self._model_arg: str | os.PathLike[str] | None = None
        if model is None or isinstance(model, str | os.PathLike):
            # Resolved when first needed: listing speakers must not need the model file.
            self._model_arg = model or None
        else:
            self._embedder = model
        self._cohorts = Cohorts(store, lambda: self.model, lambda: self.identity)

    @property
    def tenant(self) -> str:
        """The tenant every verb acts in ("default" without a database)."""
        return self._store.tenant if self._store is not None else "default"

    def in_tenant(self, tenant: str) -> Self:
        """This database as tenant ``tenant`` sees it: a SpeakerDB sharing this one's
        connections, index and loaded model, whose every verb acts in that tenant only.
        Closing it does nothing (close this one). Raises UsageError for an invalid name,
        DatabaseNotFoundError without a database."""
        view = copy.copy(self)
        view._store = self.store.in_tenant(tenant)
        view._cohorts = Cohorts(view._store, lambda: view.model, lambda: view.identity)
        return view

    @property
    def store(self) -> EnrollmentStore:
        """The database. Raises DatabaseNotFoundError when opened without one."""
        if self._store is None:
            raise DatabaseNotFoundError("no database: this needs an existing database (--db)")
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- model, thresholds and calibration ------------------------------------------------------

    def _held_model(self) -> ModelIdentity | None:
        return self._store.model() if self._store is not None else None

    def _model_spec(self) -> ModelSpec:
        """Which model to load: the one asked for, else the database's own (from the path it
        records), else ``$SPEAKERDB_MODEL`` or "ge2e". Raises ModelNotFoundError when the
        database's model file is no longer where it was loaded from."""
        held = self._held_model() if self._model_arg is None else None
        if held is None:
            return resolve_model(self._model_arg)
        if held.source is None:
            return resolve_model(held.name)
        try:
            return resolve_model(held.source)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"this database's model {held.label} ({held.family}, sha256 "
                f"{held.weights_sha256}) was last loaded from {held.source}, which is missing: "
                "pass --model PATH (or model=PATH) of the same file where it is now"
            ) from None

    @property
    def model(self) -> Embedder:
        """The embedding model, loaded on first use."""
        if self._embedder is None:
            from speakerdb.model._registry import load_model

            with self._model_lock:
                if self._embedder is None:
                    embedder = load_model(self._model_spec(), self._device)
                    if self._model_arg is None and self._store is not None:
                        # The file at the recorded path may have been replaced since.
                        self._store.check_model(embedder.identity)
                    self._remember_source(embedder.identity)
                    self._embedder = embedder
        return self._embedder

    def _remember_source(self, identity: ModelIdentity) -> None:
        """The database's model, loaded from a new place: remember that place (not in
        read-only mode; another model is refused where vectors are compared)."""
        if self._store is not None and identity.source is not None:
            self._store.remember_model_source(identity)

    def _database_countermeasure(
        self, override: str | os.PathLike[str] | None = None
    ) -> Countermeasure | None:
        """The countermeasure to run: the checkpoint ``override`` when given (this call
        only), else the one this database records, else None; loaded once per process, with
        the database's own spoof calibration where it has one for these weights.
        Raises ModelNotFoundError / ModelError, and ModelMismatchError when the recorded file
        is no longer the recorded weights: deciding without it would be silently weaker."""
        from speakerdb.enroll._spoof import own_calibration, recorded_countermeasure
        from speakerdb.storage._countermeasure_record import (
            read_countermeasure,
            read_spoof_calibration,
        )

        if override is not None:
            from speakerdb.model._countermeasure import load_countermeasure

            key = f"path:{os.path.abspath(override)}"
            if key not in self._spoof_cache:
                self._spoof_cache[key] = load_countermeasure(override)
            cm = self._spoof_cache[key]
        else:
            record = read_countermeasure(self.store)
            if record is None:
                return None
            cm = recorded_countermeasure(self._spoof_cache, record)
        if self._store is None:
            return cm
        return own_calibration(self._spoof_cache, cm, read_spoof_calibration(self.store))

    @property
    def model_loaded(self) -> bool:
        """Whether the embedding model is in memory (it loads on first use)."""
        return self._embedder is not None

    @property
    def identity(self) -> ModelIdentity:
        """The model's identity: known without loading a built-in model or the database's
        own; a model file asked for is loaded to know it."""
        if self._embedder is not None:
            return self._embedder.identity
        if self._model_arg is None:
            held = self._held_model()
            if held is not None and held.source is not None:
                return held  # a built-in model's threshold is this release's, not the row's
        spec = self._model_spec()
        if spec.path is None:
            return model_identity(spec.name)
        return self.model.identity

    @property
    def threshold(self) -> float:
        """The threshold on cosine scores here: the database's own (``calibrate --rule
        score``), else the model's. The cosine rule uses it where no calibration applies;
        enrollment warnings always do."""
        return self.default_threshold(None)

    def default_threshold(self, norm: str | None = None) -> float:
        """The threshold on the score scale of raw cosine scores (None) or of a score
        normalisation ("asnorm"): the database's own, else the model's."""
        key = normalization(norm)
        own, _ = self._store.threshold(key) if self._store is not None else (None, None)
        return own if own is not None else identity_threshold(self.identity, key)

    def decision_policy(self, options: DecisionOptions | None = None) -> DecisionPolicy:
        """How this database decides for a call's options (default: raw cosine scores, no
        overrides): the calibration in use (if any) and the rules on LLRs and on the score
        scale (see :func:`speakerdb.decisions.resolve_policy`). Without a database: as a new
        one (the bundled calibration)."""
        options = DecisionOptions() if options is None else options
        key = options.normalization
        if self._store is None:
            default, setting = "bundled", None
        else:
            default, setting = self._store.calibration_setting(key)
            if key is None and default == "auto":
                from speakerdb.enroll._self_calibration import refit_if_due

                setting = refit_if_due(self, default, setting)
        return resolve_policy(self.identity, options, default, setting)

    def _check_model(self) -> ModelIdentity:
        identity = self.identity
        self.store.check_model(identity)
        return identity

    def _embed_distinct(
        self,
        items: Sequence[AudioInput],
        batch_size: int,
        sample_rate: int | None,
        progress: Progress | None,
        head_samples: int = 0,
    ) -> tuple[list[int], list[EmbeddedAudio]]:
        """:meth:`Embedder.embed_distinct` with at least the model's default batch size."""
        from speakerdb.model._embedder import DEFAULT_BATCH_SIZE

        return self.model.embed_distinct(
            items,
            batch_size=max(batch_size, DEFAULT_BATCH_SIZE),
            sample_rate=sample_rate,
            progress=progress,
            head_samples=head_samples,
        )


# --- helpers ------------------------------------------------------------------------------------


def enroll_mode(mode: str) -> EnrollMode:
    if mode not in ENROLL_MODES:
        raise UsageError(f"mode must be one of {', '.join(ENROLL_MODES)}, not {mode!r}")
    return cast(EnrollMode, mode)


def as_list(audio: AudioInput | Sequence[AudioInput]) -> list[AudioInput]:
    if isinstance(audio, str | np.ndarray) or hasattr(audio, "__fspath__"):
        return [cast(AudioInput, audio)]
    return list(audio)


def side_of(item: EmbeddedAudio) -> Side:
    """A recording's quality as one side of a trial."""
    return Side(item.speech_seconds, 1, item.bandwidth_hz)


def vector_of(item: EmbeddedAudio) -> np.ndarray:
    if item.vector is None:  # callers pass embedded inputs only
        raise ValueError(f"{item.source} has no voiceprint")
    return item.vector


def options_of(
    options: DecisionOptions | None,
    threshold: float | None = None,
    *,
    norm: str | None = None,
    prior: float | None = None,
    far: float | None = None,
    cohort: Sequence[AudioInput] | None = None,
    size: int = DEFAULT_COHORT_SIZE,
) -> DecisionOptions:
    """A verb's decision options: ``options`` as given, else built once from the verb's
    keywords (the Python API's spelling). Raises UsageError when both are given."""
    if options is None:
        return DecisionOptions.of(
            threshold, prior=prior, far=far, norm=norm, cohort=cohort, cohort_size=size
        )
    loose = any(x is not None for x in (threshold, prior, far, cohort))
    if loose or norm not in (None, "none") or size != DEFAULT_COHORT_SIZE:
        raise UsageError("give the decision options as DecisionOptions or as keywords, not both")
    return options


def prior_or_default(prior: float | None) -> float:
    """The target prior of an operating point: the one given, else the default (0.01)."""
    return DEFAULT_OPERATING_POINT.p_target if prior is None else float(prior)


def reported_far(far: float | None) -> float:
    """The false-accept rate whose score threshold an evaluation reports (default 1 %)."""
    value = 0.01 if far is None else float(far)
    if not 0.0 <= value < 1.0:
        raise UsageError(f"--far must be in [0, 1), not {far}")
    return value


def error_of(item: EmbeddedAudio) -> AudioError:
    if item.error is None:  # an input without a vector always carries its error
        raise ValueError(f"{item.source} has neither a voiceprint nor an error")
    return item.error
