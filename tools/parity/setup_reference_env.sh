#!/usr/bin/env bash
# Creates the SEPARATE environment in which NVIDIA NeMo itself computes the reference
# embeddings that tests/test_model_nemo.py compares speakerdb's native loader with.
# NeMo is never a dependency of speakerdb: this environment lives outside the repository.
#
#   bash tools/parity/setup_reference_env.sh [VENV_DIR]      (default: $NEMO_REFENV or /work/refenv/nemo)
#
# Then:  VENV_DIR/bin/python tools/parity/make_nemo_reference.py --help
#
# About 8 GB (torch from PyPI is the CUDA build; the CPU is all that is used).
set -euo pipefail
VENV="${1:-${NEMO_REFENV:-/work/refenv/nemo}}"
PYTHON="${PYTHON:-python3}"

# The versions the committed fixtures were made with. soundfile, soxr and av are pinned to the
# versions of speakerdb's own environment, so that the derived inputs (8/48 kHz WAV, MP3) come
# out byte-identical in both environments (their sha256 is checked by the tests).
NEMO_VERSION="3.0.0"
PINS=(
  "nemo_toolkit[asr]==${NEMO_VERSION}"
  "torch==2.9.1"
  "torchaudio==2.9.1"
  "librosa==0.11.0"
  "soundfile==0.14.0"
  "soxr==1.1.0"
  "av==18.1.0"
)

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install "${PINS[@]}"
"$VENV/bin/python" - <<'PY'
import nemo, librosa, soxr, soundfile, torch
from nemo.collections.asr.models import EncDecSpeakerLabelModel  # noqa: F401  (import check)
print(f"nemo {nemo.__version__}  torch {torch.__version__}  librosa {librosa.__version__}  "
      f"soxr {soxr.__version__}  soundfile {soundfile.__version__}")
PY
echo "reference environment ready: $VENV"
