"""Batch embedding on a Ray cluster: decoding and embedding run as Ray Data ``map_batches``
over a pool of actors, each loading the model once; the driver gets back, per file, what
:meth:`Embedder.iter_embed` yields on one machine (vector, sha256, quality measures, or the
error) and hands it to the same commit path (:class:`._enrollment.ManifestEnrollment`).

Ray is imported only here and only when a ``--ray`` run starts (extra ``speakerdb[ray]``).
Workers read the audio by path: on a real cluster the files must be where every node sees
them (a shared file system). Only the driver talks to the database.

Faults: the actors are restarted by Ray when their process dies (``max_restarts``) and the
batch they held is run again (``max_task_retries``); a driver that dies loses only what it
had not committed, and a rerun skips the audio already enrolled (recognised by sha256 on
the workers, not re-embedded).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from speakerdb._identity import ModelIdentity
from speakerdb.errors import (
    AudioError,
    ConfigurationError,
    MissingDependencyError,
    ModelMismatchError,
    SpeakerDBError,
    UsageError,
)

if TYPE_CHECKING:
    from speakerdb.model._embedder import EmbeddedAudio, Embedder
    from speakerdb.model._encoder import SpeakerEncoder

__all__ = [
    "DEFAULT_FILES_PER_TASK",
    "MARKERS_ENV",
    "RayOptions",
    "RecordingProblem",
    "actor_pool",
    "check_database",
    "embed_on_ray",
    "job_error",
    "load_embedder",
    "mark_first_batch",
    "ray_iter_embed",
    "ray_options",
    "ray_session",
]

DEFAULT_FILES_PER_TASK = 16
"""Files per ``map_batches`` call: enough to keep an actor's encoder batches full, small
enough that a retried batch repeats little work."""
MARKERS_ENV = "SPEAKERDB_RAY_MARKERS"
"""A folder: each worker process writes ``<pid>`` there after its first batch (used by the
tests to kill a worker mid-job without guessing at timings; see :func:`mark_first_batch`)."""
HOLD_S = 300.0


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run a batch job on Ray.

    address: "local" (start a Ray instance on this machine for the job), "auto" (the cluster
    this machine belongs to, or ``$RAY_ADDRESS``), ``ray://host:port`` (Ray Client) or a
    cluster's ``host:port``. workers: actors in the pool (None: one per GPU of the cluster,
    else one per CPU). files_per_task: files per batch handed to an actor. gpus_per_worker:
    None uses 1 when the cluster has GPUs, else 0 (CPU actors of one core each).
    """

    address: str
    workers: int | None = None
    files_per_task: int = DEFAULT_FILES_PER_TASK
    gpus_per_worker: float | None = None

    @property
    def local(self) -> bool:
        return self.address == "local"


def ray_options(value: RayOptions | str) -> RayOptions:
    """Validated options; a string is the address. Raises UsageError."""
    options = RayOptions(value) if isinstance(value, str) else value
    address = options.address.strip()
    if not address:
        raise UsageError("--ray needs an address: local, auto, ray://HOST:PORT or HOST:PORT")
    if address not in ("local", "auto") and not address.startswith("ray://"):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UsageError(
                f"--ray {address!r}: expected local, auto, ray://HOST:PORT or HOST:PORT"
            )
    if options.workers is not None and options.workers < 1:
        raise UsageError(f"Ray workers must be at least 1, not {options.workers}")
    if options.files_per_task < 1:
        raise UsageError(f"files per Ray task must be at least 1, not {options.files_per_task}")
    if options.gpus_per_worker is not None and options.gpus_per_worker < 0:
        raise UsageError("GPUs per Ray worker cannot be negative")
    return RayOptions(address, options.workers, options.files_per_task, options.gpus_per_worker)


def check_database(options: RayOptions, dialect: str, display: str) -> None:
    """A cluster's results go to a server database: SQLite only with ``local``."""
    if dialect == "sqlite" and not options.local:
        raise UsageError(
            f"--ray {options.address}: {display} is a SQLite file, which only this machine "
            "can use; a cluster job needs PostgreSQL (--db postgresql+psycopg://...), or "
            "run with --ray local"
        )


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--ray needs Ray: pip install 'speakerdb[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """Ray connected for the job (and disconnected after, if this call connected it)."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    common: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        # The driver's limits apply on the workers too. (Not PYTHONPATH: paths of this
        # machine; every node must have speakerdb installed, or started with its own.)
        "runtime_env": {"env_vars": _worker_env()},
    }
    try:
        # "local" always starts a new instance (never joins a cluster running here).
        ray.init(address=options.address, **common)
    except ConnectionError as exc:
        raise ConfigurationError(
            f"cannot reach the Ray cluster at {options.address}: {exc}"
        ) from None
    except (RuntimeError, ValueError) as exc:
        raise ConfigurationError(f"cannot start Ray ({options.address}): {exc}") from None
    # Ray prints its workers' and raylets' complaints on the driver's stdout, which is for
    # results (--json): they go to stderr. The shutdown stays inside the redirect: it flushes
    # the messages Ray held back (e.g. "(raylet) Task ... submit failed" after a worker died)
    # to whatever sys.stdout is at that moment.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            yield ray
        finally:
            ray.shutdown()


def _worker_env() -> dict[str, str]:
    env = {}
    for name in ("SPEAKERDB_MAX_AUDIO_SECONDS", MARKERS_ENV):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def ray_iter_embed(
    options: RayOptions,
    identity: ModelIdentity,
    paths: Sequence[str],
    known: Sequence[Collection[str] | None],
    *,
    head_samples: int = 0,
    batch_size: int | None = None,
    check: ModelIdentity | None = None,
    expect: Sequence[str] = (),
) -> Iterator[tuple[int, EmbeddedAudio]]:
    """Yield ``(index, result)`` for every path, as :meth:`Embedder.iter_embed` would, in
    the order the cluster finishes them.

    known[i]: sha256 of audio that need not be embedded for path i (its result comes back
    ``skipped``); None: skip path i whatever its audio (decoded only). head_samples,
    batch_size: as in :meth:`Embedder.iter_embed`. check, expect: re-embedding -- path i is
    embedded only if it is still the audio ``expect[i]`` as the model ``check`` decodes it;
    otherwise its result's error has code "missing" (no such file), "changed" (other audio)
    or the decoding error's.
    """
    if not paths:
        return
    from speakerdb.model._embedder import DEFAULT_BATCH_SIZE

    with ray_session(options) as ray:
        import ray.data

        blocks = max(1, math.ceil(len(paths) / options.files_per_task))
        workers, per_worker, device = actor_pool(ray, options, blocks)
        rows = [
            {
                "index": i,
                "path": str(path),
                "skip_all": known[i] is None,
                "known": ",".join(sorted(known[i] or ())),
                "expect": expect[i] if expect else "",
            }
            for i, path in enumerate(paths)
        ]
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _EmbedWorker,
            fn_constructor_kwargs={
                "model": identity.source or identity.name,
                "key": identity.key,
                "check": None if check is None else (check.source or check.name, check.key),
                "device": device,
                "head_samples": head_samples,
                "batch_size": batch_size or DEFAULT_BATCH_SIZE,
            },
            batch_size=options.files_per_task,
            batch_format="numpy",
            # Ray Data restarts a pool's actor that dies and runs its batch again (its
            # actors default to max_restarts=-1, max_task_retries=-1).
            compute=ray.data.ActorPoolStrategy(size=workers),
            **per_worker,
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                yield from _results(batch)
        except ray.exceptions.RayError as exc:
            raise job_error(exc) from None


def actor_pool(ray: Any, options: RayOptions, blocks: int) -> tuple[int, dict[str, float], str]:
    """The pool for a job of ``blocks`` batches on the connected cluster: how many actors,
    the resources each asks for, and the device their model runs on. Also quietens Ray
    Data's progress output (stdout is for results). ray: the module, ``ray.data``
    imported."""
    resources = ray.cluster_resources()
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    per_worker = {"num_gpus": gpus} if gpus > 0 else {"num_cpus": 1.0}
    if options.workers is not None:
        workers = options.workers
    elif gpus > 0:
        workers = max(1, int(resources.get("GPU", 0) // gpus))
    else:
        workers = max(1, int(resources.get("CPU", 1)))
    workers = min(workers, blocks)  # an actor without a batch would only load the model
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return workers, per_worker, "cuda" if gpus > 0 else "cpu"


def embed_on_ray(
    ray: RayOptions | str,
    audio: Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ModelIdentity, list[EmbeddedAudio]]:
    """Embed files on a Ray cluster (what :meth:`Embedder.embed` does on one machine): the
    model's identity and one result per file, in order. model: as for
    :func:`speakerdb.load_model` (a model file is loaded here once to know its identity,
    then by every worker from the same path)."""
    from speakerdb.model._registry import load_model, model_identity, resolve_model

    options = ray_options(ray)
    spec = resolve_model(model)
    identity = model_identity(spec.name) if spec.path is None else load_model(spec).identity
    paths = [str(p) for p in audio]
    results: dict[int, EmbeddedAudio] = {}
    for index, result in ray_iter_embed(options, identity, paths, [()] * len(paths)):
        results[index] = result
        if progress is not None:
            progress(len(results), len(paths))
    return identity, [results[i] for i in range(len(paths))]


class _EmbedWorker:
    """One actor of the pool: the model loaded once, then batches of files embedded."""

    def __init__(
        self,
        model: str,
        key: tuple[str, str, int],
        device: str,
        head_samples: int,
        batch_size: int,
        check: tuple[str, tuple[str, str, int]] | None = None,
    ) -> None:
        self.embedder = load_embedder(model, key, device)
        self.checker = None if check is None else load_embedder(check[0], check[1], "cpu").encoder
        self.head_samples = head_samples
        self.batch_size = batch_size
        self.batches = 0

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        from speakerdb.model._embedder import EmbeddedAudio

        paths = [str(p) for p in batch["path"]]
        skip_all = [bool(s) for s in batch["skip_all"]]
        known = [set(str(k).split(",")) if k else set() for k in batch["known"]]
        out: dict[int, EmbeddedAudio] = {}
        if self.checker is not None:
            for i, (path, expect) in enumerate(zip(paths, batch["expect"], strict=True)):
                problem = _changed(path, str(expect), self.checker)
                if problem is not None:
                    out[i] = EmbeddedAudio(path, None, error=problem)
        todo = [i for i in range(len(paths)) if i not in out]
        for j, result in self.embedder.iter_embed(
            [paths[i] for i in todo],
            batch_size=self.batch_size,
            skip=lambda j, sha: skip_all[todo[j]] or sha in known[todo[j]],
            head_samples=self.head_samples,
        ):
            out[todo[j]] = result
        columns = _columns(
            [int(i) for i in batch["index"]],
            [out[i] for i in range(len(paths))],
            self.embedder.dimension,
        )
        self.batches += 1
        if self.batches == 1:
            mark_first_batch()
        return columns


def load_embedder(model: str, key: tuple[str, str, int], device: str) -> Embedder:
    from speakerdb.model._registry import load_model

    embedder = load_model(model, device)
    if embedder.identity.key != tuple(key):
        raise ModelMismatchError(
            f"Ray worker loaded {embedder.identity.label} from {model}, not the job's model "
            f"{key[0]}:{key[1][:12]}"
        )
    return embedder


class RecordingProblem(AudioError):
    """A recording that cannot be re-embedded: ``code`` "missing" or "changed"."""

    def __init__(self, source: str, code: str, reason: str) -> None:
        super().__init__(source, reason)
        self.code = code


def _changed(path: str, expect: str, checker: SpeakerEncoder) -> AudioError | None:
    """Why ``path`` is no longer the enrolled audio ``expect`` (None: it is)."""
    from speakerdb.model._utterance import decoded_digest

    if not os.path.isfile(path):
        return RecordingProblem(path, "missing", "no such file")
    try:
        digest = decoded_digest(path, checker)
    except AudioError as exc:
        exc.__traceback__ = None
        return exc
    if digest != expect:
        return RecordingProblem(
            path, "changed", "the file's audio differs from the enrolled recording"
        )
    return None


def job_error(exc: Exception) -> SpeakerDBError:
    """The error that failed a Ray job, as the one-machine command would raise it: a
    speakerdb error raised in a worker (its class and message; Ray passes some only as
    text), else ConfigurationError naming Ray's."""
    from speakerdb import errors

    cause = getattr(exc, "cause", None)
    if isinstance(cause, SpeakerDBError):
        return cause
    found = re.findall(r"speakerdb\.errors\.(\w+): (.+)", str(exc))
    if found:
        name, message = found[-1]
        kind = getattr(errors, name, None)
        if isinstance(kind, type) and issubclass(kind, SpeakerDBError):
            try:
                return kind(message)
            except TypeError:  # classes with more arguments
                pass
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigurationError(f"the Ray job failed: {first}")


def mark_first_batch() -> None:
    """The tests' hook (``$SPEAKERDB_RAY_MARKERS``): write ``<folder>/<pid>``; then, while
    ``<folder>/hold`` exists, wait for ``<folder>/release`` (at most HOLD_S), so that a test
    acts on a job that cannot have finished meanwhile, however loaded the machine."""
    folder = os.environ.get(MARKERS_ENV)
    if not folder:
        return
    with open(os.path.join(folder, str(os.getpid())), "w") as marker:
        marker.write("1")
    deadline = time.monotonic() + HOLD_S
    while (
        os.path.exists(os.path.join(folder, "hold"))
        and not os.path.exists(os.path.join(folder, "release"))
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)


def _columns(
    indexes: list[int], results: list[EmbeddedAudio], dimension: int
) -> dict[str, npt.NDArray[Any]]:
    """Results as columns Arrow carries (None as NaN / "" / an empty array)."""

    def number(value: float | None) -> float:
        return math.nan if value is None else float(value)

    vectors = np.zeros((len(results), dimension), dtype=np.float32)
    for row, r in enumerate(results):
        if r.vector is not None:
            vectors[row] = r.vector
    return {
        "index": np.array(indexes, dtype=np.int64),
        "source": _strings(r.source for r in results),
        "has_vector": np.array([r.vector is not None for r in results]),
        "vector": vectors,
        "error_code": _strings(r.error.code if r.error else "" for r in results),
        "error_reason": _strings(r.error.reason if r.error else "" for r in results),
        "sha256": _strings(r.sha256 or "" for r in results),
        "duration": np.array([number(r.duration) for r in results]),
        "speech_seconds": np.array([number(r.speech_seconds) for r in results]),
        "bandwidth_hz": np.array([number(r.bandwidth_hz) for r in results]),
        "skipped": np.array([r.skipped for r in results]),
        "head": np.array(
            [r.head.astype(np.float32).tobytes() if r.head is not None else b"" for r in results],
            dtype=object,
        ),
        "head_bandwidth_hz": np.array([number(r.head_bandwidth_hz) for r in results]),
        "head_seconds": np.array([number(r.head_seconds) for r in results]),
    }


def _strings(values: Iterable[str]) -> npt.NDArray[Any]:
    return np.array(list(values), dtype=object)


def _results(batch: dict[str, npt.NDArray[Any]]) -> Iterator[tuple[int, EmbeddedAudio]]:
    from speakerdb.model._embedder import EmbeddedAudio

    def maybe(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    for row in range(len(batch["index"])):
        code = str(batch["error_code"][row])
        source = str(batch["source"][row])
        head = bytes(batch["head"][row])
        yield (
            int(batch["index"][row]),
            EmbeddedAudio(
                source,
                np.array(batch["vector"][row], dtype=np.float32)
                if batch["has_vector"][row]
                else None,
                error=_audio_error(code, source, str(batch["error_reason"][row])) if code else None,
                sha256=str(batch["sha256"][row]) or None,
                duration=maybe(batch["duration"][row]),
                speech_seconds=maybe(batch["speech_seconds"][row]),
                skipped=bool(batch["skipped"][row]),
                bandwidth_hz=maybe(batch["bandwidth_hz"][row]),
                head=np.frombuffer(head, dtype=np.float32).copy() if head else None,
                head_bandwidth_hz=maybe(batch["head_bandwidth_hz"][row]),
                head_seconds=maybe(batch["head_seconds"][row]),
            ),
        )


def _audio_error(code: str, source: str, reason: str) -> AudioError:
    """The AudioError a worker reported, rebuilt from its code."""
    if code in ("missing", "changed"):
        return RecordingProblem(source, code, reason)
    pending: list[type[AudioError]] = [AudioError]
    while pending:
        kind = pending.pop()
        if kind.code == code:
            return kind(source, reason)
        pending.extend(kind.__subclasses__())
    return AudioError(source, reason)
