"""Default thresholds on the score scales, where no calibration and no database threshold
decide: a model's own threshold on raw cosine scores (carried by its identity) and the one
threshold of AS-norm z-scores."""

from __future__ import annotations

from speakerdb._identity import ModelIdentity
from speakerdb.decisions._options import Scale

__all__ = ["DEFAULT_ASNORM_THRESHOLD", "model_threshold"]

DEFAULT_ASNORM_THRESHOLD = 4.33
"""The threshold of AS-norm z-scores: GE2E's rule on raw cosines (1 % false accepts of
impostor recordings against 3-recording voiceprints) applied to AS-norm scores against a
cohort of 120 LibriSpeech speakers. Z-scores are on a scale of their own whatever the model;
this is the only figure measured, and serves every model until the database is calibrated."""


def model_threshold(identity: ModelIdentity, norm: Scale) -> float:
    """A model's default threshold on the scale of ``norm``: its own on raw cosine scores,
    :data:`DEFAULT_ASNORM_THRESHOLD` on AS-norm z-scores."""
    if norm is Scale.ASNORM:
        return DEFAULT_ASNORM_THRESHOLD
    return identity.default_threshold
