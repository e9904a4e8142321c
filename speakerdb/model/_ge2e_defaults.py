"""The bundled GE2E model's decision defaults, known without torch: the registry describes the
model with them and the encoder carries them (both import them from here, neither from the
other)."""

from __future__ import annotations

from speakerdb.decisions import DEFAULT_ASNORM_THRESHOLD

__all__ = ["GE2E_DEFAULT_ASNORM_THRESHOLD", "GE2E_DEFAULT_THRESHOLD", "GE2E_THRESHOLD_NOTE"]

GE2E_DEFAULT_THRESHOLD = 0.82
"""Calibrated decision threshold of the bundled GE2E model on raw cosine scores: on each
read-speech development set, the threshold at 1 % false accepts of impostor recordings
against 3-recording voiceprints; the highest of them (benchmarks/calibrate_default.py;
README, "Accuracy and calibration")."""
GE2E_THRESHOLD_NOTE = (
    "speakerdb's threshold for GE2E: 1 % false accepts on its read-speech development sets"
)

GE2E_DEFAULT_ASNORM_THRESHOLD = DEFAULT_ASNORM_THRESHOLD
"""The same rule applied to AS-norm scores (a cohort of 120 LibriSpeech speakers): the
threshold of every model's AS-norm z-scores (:mod:`speakerdb.decisions`)."""
