#!/usr/bin/env bash
# Builds the SEPARATE reference environment in which the original frameworks run:
# SpeechBrain (EncoderClassifier) and WeSpeaker (its ResNet34, its CLI feature code, its ONNX
# export settings), plus onnx/onnxruntime. None of this is a dependency of speakerdb: the
# environment only produces the parity fixtures and the speed comparison.
#
#   bash tools/parity/setup_speechbrain_wespeaker_env.sh [VENV]   (default /work/refenv/sbws)
#
# WeSpeaker is not published on PyPI under its own name; `wespeaker-unofficial` is a build of
# the upstream repository (wenet-e2e/wespeaker; its cli/speaker.py, models/resnet.py and
# models/pooling_layers.py are byte-identical to upstream at the time of writing).
# torchaudio 2.9 reads files through torchcodec, which needs FFmpeg's shared libraries.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-/work/refenv/sbws}"
PYTHON="${PYTHON:-python3.11}"

if ! ldconfig -p | grep -q libavcodec; then
    echo "installing FFmpeg libraries (torchcodec needs them)" >&2
    apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --quiet --upgrade pip
# Same torch/torchaudio as speakerdb's own environment, so that both sides run the same kernels.
"$PIP" install --quiet \
    "torch==2.9.1" "torchaudio==2.9.1" "torchcodec==0.8.1" \
    "speechbrain==1.1.2" "hyperpyyaml==1.2.3" \
    "onnx==1.23.1" "onnxruntime==1.30.0" \
    "soundfile==0.14.0" "soxr==1.1.0" "numpy==2.4.6" "pyyaml"
# WeSpeaker without its optional SSL/Whisper front ends (s3prl, openai-whisper, transformers,
# peft): s3prl 0.4 calls torchaudio.set_audio_backend, which torchaudio 2.9 no longer has, so
# importing them fails. The fbank path used here needs none of them; tools/parity/_wespeaker.py
# imports wespeaker.cli.speaker with an fbank-only `wespeaker.frontend`.
"$PIP" install --quiet --no-deps "wespeaker-unofficial==0.0.2"
"$PIP" install --quiet "silero-vad==6.2.3" "kaldiio==2.18.1" "tqdm" \
    "umap-learn==0.5.6" "hdbscan==0.8.44"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "torchaudio", "torchcodec", "speechbrain", "hyperpyyaml",
             "wespeaker-unofficial", "onnx", "onnxruntime", "soundfile", "soxr", "numpy"):
    print(f"{name}=={md.version(name)}")
import sys
sys.path.insert(0, "tools/parity")
import speechbrain.inference.speaker  # noqa: F401
import _wespeaker  # noqa: F401  (imports wespeaker.cli.speaker)
print("reference environment ready")
PY
