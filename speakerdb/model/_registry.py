"""The models speakerdb knows: built-in ones by name, bring-your-own ones by path.

A model is named by a string: a built-in name ("ge2e") or a path to a model file or folder
of one of the families speakerdb loads natively (``~`` expanded):

* ``nemo``: a NeMo ``EncDecSpeakerLabelModel`` archive (a tar with ``model_config.yaml``);
* ``speechbrain``: a folder with ``hyperparams.yaml`` naming an ECAPA_TDNN and
  ``embedding_model.ckpt``;
* ``onnx``: a WeSpeaker-exported ONNX graph (input ``feats``, output ``embs``).

The family is recognised by content, never by the file name. Identities of built-in models
are known without loading torch; a bring-your-own model's identity (weights sha256,
dimension) is known once it is loaded.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speakerdb._identity import ModelIdentity
from speakerdb.decisions import NORMALIZATIONS, Scale, model_threshold
from speakerdb.errors import ModelError, ModelNotFoundError, UsageError
from speakerdb.model._ge2e_defaults import (
    GE2E_DEFAULT_ASNORM_THRESHOLD,
    GE2E_DEFAULT_THRESHOLD,
    GE2E_THRESHOLD_NOTE,
)
from speakerdb.model._weights import ge2e_weights_path, weights_sha256

if TYPE_CHECKING:
    import torch

    from speakerdb.model._embedder import Embedder
    from speakerdb.model._encoder import SpeakerEncoder

__all__ = [
    "DEFAULT_MODEL",
    "FAMILIES",
    "GE2E_DEFAULT_ASNORM_THRESHOLD",
    "GE2E_DEFAULT_THRESHOLD",
    "GE2E_THRESHOLD_NOTE",
    "MODEL_ENV",
    "NORMALIZATIONS",
    "ModelInfo",
    "ModelSpec",
    "available_models",
    "default_threshold",
    "describe_model",
    "detect_family",
    "identity_threshold",
    "load_encoder",
    "load_model",
    "model_identity",
    "resolve_model",
]

DEFAULT_MODEL = "ge2e"
MODEL_ENV = "SPEAKERDB_MODEL"
"""Environment variable naming the model (a name or a path) where none is given."""

FAMILIES = ("nemo", "speechbrain", "onnx")
"""Bring-your-own model families, in the order files are tested for them."""

_MODELS = ("ge2e",)


@dataclass(frozen=True)
class ModelSpec:
    """A model named but not loaded: ``name`` is a built-in name or a family; ``path`` is
    the resolved file or folder of a bring-your-own model (None for a built-in one)."""

    name: str
    path: Path | None = None

    @property
    def text(self) -> str:
        """How the model is named in messages and stored: the name, or the path."""
        return self.name if self.path is None else str(self.path)


def available_models() -> tuple[str, ...]:
    """The built-in model names (bring-your-own models are named by path)."""
    return _MODELS


def resolve_model(name_or_path: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Which model a name or path means, without loading it.

    None: ``$SPEAKERDB_MODEL`` if set, else "ge2e". A built-in name, or a path (``~``
    expanded) to a file or folder whose content is one of :data:`FAMILIES`.

    Raises ModelNotFoundError (neither a built-in name nor an existing path) and ModelError
    (a file or folder of no family speakerdb loads, naming what was found).
    """
    if name_or_path is None or (isinstance(name_or_path, str) and not name_or_path):
        name_or_path = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    text = os.fspath(name_or_path)
    if text in _MODELS:
        return ModelSpec(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"unknown model {text!r}: not a built-in model ({', '.join(_MODELS)}) and no "
            f"file or folder at {path}"
        )
    path = path.absolute()
    return ModelSpec(detect_family(path), path)


def detect_family(path: Path) -> str:
    """The family of a model file or folder, by content. Raises ModelError naming what was
    found when it is none of :data:`FAMILIES`."""
    from speakerdb.model._nemo_archive import is_nemo_archive
    from speakerdb.model._onnx import is_onnx_model
    from speakerdb.model._speechbrain import is_speechbrain_folder

    if path.is_dir():
        if is_speechbrain_folder(path):
            return "speechbrain"
        try:
            names = sorted(p.name for p in path.iterdir())
        except OSError as exc:
            raise ModelError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise ModelError(
            f"{path}: not a model folder speakerdb knows (a SpeechBrain folder holds "
            f"hyperparams.yaml naming an ECAPA_TDNN and embedding_model.ckpt); found: "
            f"{shown or 'nothing'}"
        )
    if is_nemo_archive(path):
        return "nemo"
    if is_onnx_model(path):
        return "onnx"
    raise ModelError(f"{path}: not a model file speakerdb knows ({_describe_file(path)})")


def _describe_file(path: Path) -> str:
    """What a file that is not a model looks like, for the error message."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(265)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if size == 0:
        return "an empty file"
    kinds = [
        (head[:2] == b"\x1f\x8b", "a gzip file without a NeMo model_config.yaml"),
        (head[257:262] == b"ustar", "a tar archive without a NeMo model_config.yaml"),
        (head[:4] == b"PK\x03\x04", "a zip archive (a bare checkpoint? give the model folder)"),
        (head[:1] == b"\x08", "an ONNX-like protobuf without input 'feats' and output 'embs'"),
    ]
    for matched, what in kinds:
        if matched:
            return f"{what}, {size} bytes"
    return f"{size} bytes starting {head[:8].hex()}"


# --- identities and thresholds -----------------------------------------------------------------


def _ge2e_identity() -> ModelIdentity:
    return ModelIdentity(
        name="ge2e",
        weights_sha256=weights_sha256(ge2e_weights_path()),
        dimension=256,
        default_threshold=GE2E_DEFAULT_THRESHOLD,
        family="ge2e",
        threshold_note=GE2E_THRESHOLD_NOTE,
    )


def identity_threshold(identity: ModelIdentity, normalization: str | None = None) -> float:
    """A model's default threshold for raw cosine scores or for a score normalisation.

    AS-norm z-scores are on a scale of their own whatever the model (see
    :func:`speakerdb.decisions.model_threshold`)."""
    return model_threshold(identity, Scale.of_norm(normalization))


def default_threshold(name: str = DEFAULT_MODEL, normalization: str | None = None) -> float:
    """A built-in model's threshold for raw cosine scores or for a score normalisation."""
    return identity_threshold(model_identity(name), normalization)


def model_identity(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> ModelIdentity:
    """Identity (name, weights sha256, dimension, default threshold) of a model.

    Built-in names are answered without loading torch; a path is loaded (its dimension is
    known only then). Raises ModelError / ModelNotFoundError as :func:`resolve_model`."""
    spec = resolve_model(name_or_path)
    if spec.path is None:
        return _ge2e_identity()
    return _encoder_identity(load_encoder(spec), spec.path)


def _encoder_identity(encoder: SpeakerEncoder, path: Path) -> ModelIdentity:
    return ModelIdentity(
        name=encoder.family,
        weights_sha256=encoder.weights_sha256,
        dimension=int(encoder.dimension),
        default_threshold=round(float(encoder.default_threshold), 9),
        family=encoder.family,
        source=str(path),
        threshold_note=encoder.threshold_note,
    )


_load_lock = threading.Lock()


def load_encoder(spec: ModelSpec) -> SpeakerEncoder:
    """Load the SpeakerEncoder of a bring-your-own model (on the CPU). Raises ModelError."""
    if spec.path is None:
        raise UsageError(f"{spec.name} is a built-in model, not a model file")
    with _load_lock:  # a server's threads may ask at once; loading twice only wastes memory
        if spec.name == "nemo":
            from speakerdb.model._nemo import load_nemo

            return load_nemo(spec.path)
        if spec.name == "speechbrain":
            from speakerdb.model._speechbrain import load_speechbrain

            return load_speechbrain(spec.path)
        if spec.name == "onnx":
            from speakerdb.model._onnx import load_onnx

            # One intra-op thread: on a CPU the engine runs one encoder worker per core, each
            # calling the session; ORT's own thread pool on top of them oversubscribed the
            # cores (1.3x slower than WeSpeaker's recipe; benchmarks/embed_throughput.py).
            return load_onnx(spec.path, threads=1)
    raise ModelError(f"unknown model family {spec.name!r}")


def load_model(
    name_or_path: str | os.PathLike[str] | ModelSpec | None = None,
    device: str | torch.device | None = None,
) -> Embedder:
    """Load an embedding model: a built-in name ("ge2e", the default) or the path of a
    NeMo ``.nemo`` archive, a SpeechBrain folder or a WeSpeaker ONNX file (``~`` expanded;
    None: ``$SPEAKERDB_MODEL``, else "ge2e"). ``device``: None picks CUDA when available,
    else CPU.

    Raises ModelNotFoundError (no such name or path), ModelError (unrecognised, malformed,
    hostile or unsupported model), MissingDependencyError (ONNX without onnxruntime),
    ConfigurationError for an unusable device.
    """
    spec = name_or_path if isinstance(name_or_path, ModelSpec) else resolve_model(name_or_path)
    from speakerdb.model._device import resolve_device
    from speakerdb.model._embedder import Embedder

    if spec.path is None:
        from speakerdb.model._ge2e import GE2EEncoder, GE2ESpeakerEncoder

        identity = _ge2e_identity()
        network = GE2EEncoder.from_checkpoint(ge2e_weights_path())
        encoder: SpeakerEncoder = GE2ESpeakerEncoder(network, identity.weights_sha256)
    else:
        encoder = load_encoder(spec)
        identity = _encoder_identity(encoder, spec.path)
    return Embedder(encoder, identity, resolve_device(device))


@dataclass(frozen=True)
class ModelInfo:
    """What ``speakerdb models show`` reports about a model.

    threshold_origin: where ``default_threshold`` (a cosine in [-1, 1]) comes from.
    calibration: "bundled" when speakerdb ships a calibration to log-likelihood ratios for
    these exact weights, else None: decisions then compare the cosine with the default
    threshold, marked uncalibrated, until ``speakerdb calibrate`` runs on the user's data.
    """

    name: str
    family: str
    label: str
    source: str | None
    dimension: int
    weights_sha256: str
    sample_rate: int
    default_threshold: float
    threshold_origin: str
    calibration: str | None
    architecture: str | None

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "calibrated": self.calibrated}


def describe_model(name_or_path: str | os.PathLike[str] | None = None) -> ModelInfo:
    """Load a model (see :func:`load_model`) on the CPU and describe it. Raises as
    :func:`load_model`."""
    from speakerdb._calibration import bundled_calibration

    spec = resolve_model(name_or_path)
    if spec.path is None:
        identity, sample_rate = _ge2e_identity(), 16_000
        architecture = "GE2E: 3-layer LSTM(256), linear 256"
    else:
        encoder = load_encoder(spec)
        identity = _encoder_identity(encoder, spec.path)
        sample_rate = int(encoder.sample_rate)
        found = getattr(encoder, "architecture", None)
        architecture = found if isinstance(found, str) else ""
    bundled = bundled_calibration(*identity.key)
    return ModelInfo(
        name=identity.name,
        family=identity.family,
        label=identity.label,
        source=identity.source,
        dimension=identity.dimension,
        weights_sha256=identity.weights_sha256,
        sample_rate=sample_rate,
        default_threshold=identity.default_threshold,
        threshold_origin=identity.threshold_note,
        calibration="bundled" if bundled is not None else None,
        architecture=architecture or None,
    )
