"""The nemo family: .nemo archives loaded natively, proven identical to NVIDIA NeMo.

The fixtures in tests/fixtures/models/nemo/ were made by tools/parity/make_nemo_reference.py
in a separate environment with NeMo itself (see tools/parity/setup_reference_env.sh): NeMo's
own TitaNet-small, SpeakerNet and ECAPA example configs with few channels, random
discriminative weights, saved with NeMo's ``save_to``, and the embeddings NeMo's
``get_embedding`` gives for every recording of ../shared/data and for 8 kHz, 48 kHz and MP3
versions of them. These tests need neither NeMo nor the network: they regenerate the derived
inputs the same way (checking their sha256), embed everything with speakerdb's loader, and
compare.
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from helpers import ROOT, require_data
from speakerdb.errors import ModelError
from speakerdb.model._nemo import NemoEncoder, is_nemo_archive, load_nemo

sys.path.insert(0, str(ROOT / "tools" / "parity"))
from derived_audio import derive, derived_path, sha256_file
from nemo_parity import embed_paths, encode_chunks

FIXTURES = ROOT / "tests" / "fixtures" / "models" / "nemo"
MODELS = ("titanet-small", "speakernet-small", "ecapa-small")
REGENERATE = (
    "regenerate the references with tools/parity/setup_reference_env.sh and "
    "tools/parity/make_nemo_reference.py (see tools/parity/README.md)"
)
# Parity thresholds (1 - cosine with NeMo's embedding), per model and input variant, from the
# spread measured across CPUs and settings (docs/parity.md; tools/parity/spread.py). Wideband
# inputs (16 kHz recordings, their 48 kHz and MP3 versions) move by at most 2e-7 whatever the
# CPU, threads or kernels: each file within 1e-3, 1e-4 on average (issue 11's bounds).
MIN_COSINE = 0.999
MIN_MEAN_COSINE = 0.9999
# Inputs band-limited to 4 kHz (the 8 kHz versions, the 8 kHz telephone recordings) are
# ill-conditioned in NeMo's own pipeline: upsampled to 16 kHz they leave the mel bands above
# 4 kHz empty but for rounding noise, which per-feature normalisation scales to unit variance
# and the random BatchNorm of the fixtures amplifies. Rounding-level changes of the resampled
# samples or of the FFT (another CPU's oneMKL kernels, libsoxr's other engine) leave most of
# these files where they were (median 1 - cosine <= 1e-6) but move a heavy tail: over all 450
# 8 kHz files, 3.8% by more than 1e-3, 0.7% by more than 1e-2, the worst by 5.6e-2. So the
# median must stay within 1e-5 (a loader defect moves most files), 90% of the files within
# 1e-2, and every one within 0.2 (unrelated recordings of these fixtures: cosine 0.06-0.21).
NARROW_MIN_COSINE = 0.8
NARROW_P10_COSINE = 0.99
NARROW_MEDIAN_COSINE = 0.99999
# Fast runs embed every original recording and every SUBSET-th derived one; the slow test
# takes them all.
SUBSET = 10


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_torch() -> Iterator[None]:
    """One torch thread here: these networks are small, and on a busy 2-core machine
    OpenMP's spinning threads make the front end ~20x slower in CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- references --------------------------------------------------------------------------------


class Reference:
    """One fixture model's reference table (see make_nemo_reference.py)."""

    def __init__(self, name: str) -> None:
        table = np.load(FIXTURES / f"{name}.reference.npz", allow_pickle=False)
        self.name = name
        self.sets = [str(s) for s in table["set"]]
        self.paths = [str(p) for p in table["path"]]
        self.variants = [str(v) for v in table["variant"]]
        self.sha256 = [str(s) for s in table["sha256"]]
        self.embeddings = table["embedding"].astype(np.float32)
        self.model_sha256 = str(table["model_sha256"])
        self.nemo_version = str(table["nemo_version"])

    def rows(self, variant: str, every: int = 1) -> list[int]:
        rows = [i for i, v in enumerate(self.variants) if v == variant]
        return rows[::every]


@pytest.fixture(scope="module")
def derived_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nemo-derived")


def input_path(ref: Reference, row: int, data: Path, derived: Path) -> Path:
    """The recording of reference row ``row``: the development file itself, or its derived
    version regenerated under ``derived`` (sha256 checked against the reference)."""
    folder, rel, variant = ref.sets[row], ref.paths[row], ref.variants[row]
    source = data / folder / rel
    if variant == "orig":
        path = source
    else:
        path = derived_path(derived, folder, rel, variant)
        if not path.is_file():
            derive(source, variant, path)
    if sha256_file(path) != ref.sha256[row]:
        pytest.fail(
            f"{folder}/{rel} ({variant}) differs from the input NeMo embedded (sha256 "
            f"mismatch: changed development data or soxr/libsndfile versions); {REGENERATE}"
        )
    return path


def band(ref: Reference, row: int) -> str:
    """The band of an input: narrow when recorded or derived at 8 kHz, else wide."""
    return "narrow" if ref.variants[row] == "8k" or ref.sets[row] == "telephone" else "wide"


def check_parity(
    name: str, variants: tuple[str, ...], every: int, derived: Path, every_orig: int
) -> None:
    data = require_data()
    ref = Reference(name)
    encoder = load_nemo(FIXTURES / f"{name}.nemo")
    assert encoder.weights_sha256 == ref.model_sha256, f"{name}.nemo is not the one referenced"
    report = []
    for variant in variants:
        rows = ref.rows(variant, every_orig if variant == "orig" else every)
        assert rows, f"no reference rows for {variant}"
        paths = [input_path(ref, r, data, derived) for r in rows]
        ours = embed_paths(encoder, paths)
        theirs = ref.embeddings[rows]
        theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
        cosines = np.array([float(ours[p] @ t) for p, t in zip(paths, theirs, strict=True)])
        for kind in ("wide", "narrow"):
            chosen = np.array([band(ref, r) == kind for r in rows])
            if not chosen.any():
                continue
            cos = cosines[chosen]
            worst = int(np.argmin(cos))
            where = [p for p, c in zip(paths, chosen, strict=True) if c][worst]
            report.append(
                f"{variant}/{kind}: n={len(cos)} min={cos.min():.6f} "
                f"median={np.median(cos):.7f} mean={cos.mean():.6f}"
            )
            if kind == "wide":
                assert cos.min() >= MIN_COSINE, f"{name} {variant}: {where} cosine {cos.min():.6f}"
                assert cos.mean() >= MIN_MEAN_COSINE, f"{name} {variant}: mean {cos.mean():.6f}"
            else:
                low, median = float(np.percentile(cos, 10)), float(np.median(cos))
                assert cos.min() >= NARROW_MIN_COSINE, f"{name} {variant}: {where} {cos.min():.6f}"
                assert low >= NARROW_P10_COSINE, f"{name} {variant}/{kind}: 10th pct {low:.6f}"
                assert median >= NARROW_MEDIAN_COSINE, f"{name} {variant}: median {median:.7f}"
    print(f"\n{name} vs NeMo {ref.nemo_version}: " + "; ".join(report))


def test_parity_with_nemo_titanet(derived_dir: Path) -> None:
    """TitaNet: every original recording of every set (540, telephone at 8 kHz mu-law
    included), and every SUBSET-th one at 8 kHz, 48 kHz and in MP3, against NeMo's
    get_embedding: cosine >= 0.999 each and >= 0.9999 on average for wideband inputs; the
    bounds of band-limited ones are above (NARROW_*, docs/parity.md)."""
    check_parity("titanet-small", ("orig", "8k", "48k", "mp3"), SUBSET, derived_dir, 1)


@pytest.mark.parametrize("name", ["speakernet-small", "ecapa-small"])
def test_parity_with_nemo_other_architectures(name: str, derived_dir: Path) -> None:
    """SpeakerNet (xvector pooling) and ECAPA: every 4th original recording and every
    2 * SUBSET-th derived one (all of them in the slow test)."""
    check_parity(name, ("orig", "8k", "48k", "mp3"), 2 * SUBSET, derived_dir, 4)


@pytest.mark.slow
@pytest.mark.full_parity
@pytest.mark.parametrize("name", MODELS)
def test_parity_with_nemo_every_file(name: str, derived_dir: Path) -> None:
    """All 1890 reference files per model: 540 originals and 450 per derived variant
    (minutes: the MP3 encoding and the 8 kHz / 48 kHz resampling of every file)."""
    check_parity(name, ("orig", "8k", "48k", "mp3"), 1, derived_dir, 1)


# --- the interface ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=MODELS)
def fixture_encoder(request: pytest.FixtureRequest) -> NemoEncoder:
    return load_nemo(FIXTURES / f"{request.param}.nemo")


def test_encoder_identity(fixture_encoder: NemoEncoder) -> None:
    encoder = fixture_encoder
    assert encoder.family == "nemo"
    assert encoder.sample_rate == 16_000
    assert encoder.default_threshold == pytest.approx(0.4)
    assert "0.7" in encoder.threshold_note and "0.4" in encoder.threshold_note
    assert encoder.exact_padding is True
    names = {p.name for p in FIXTURES.glob("*.nemo")}
    digests = {sha256_file(FIXTURES / n): n for n in names}
    assert encoder.weights_sha256 in digests
    chunks = encoder.prepare(np.zeros(16_000, np.float32) + 0.01)
    assert len(chunks) == 1 and chunks[0].shape == (100, encoder.front_end.features)
    emb = encoder.encode(chunks[0][None], torch.tensor([100]))
    assert emb.shape == (1, encoder.dimension) and emb.dtype == torch.float32


def test_batch_invariance(fixture_encoder: NemoEncoder) -> None:
    """An utterance alone and inside a zero-padded batch of 16 of different lengths (0.5 to
    35 s): cosine >= 0.9999. (ECAPA's convolutions are unmasked in NeMo: this checks that
    each utterance still sees exactly NeMo's own padding.)"""
    data = require_data()
    paths = sorted((data / "librispeech" / "test-other").rglob("*.flac"))[:6]
    paths += sorted((data / "vctk").rglob("*.wav"))[:5]
    paths += sorted((data / "arabic-commands").rglob("*.wav"))[:5]
    chunks = []
    for i, path in enumerate(paths):
        samples, rate = sf.read(path, dtype="float32")
        # every length different (the keywords are all 1 s long), odd sample counts included
        samples = samples[: int(len(samples) * (0.5 + 0.03 * i)) + 37]
        chunks.append(fixture_encoder.prepare(fixture_encoder.resample(samples, rate))[0])
    lengths = {c.shape[0] for c in chunks}
    assert len(lengths) == len(chunks), "the batch must mix lengths"
    batch = encode_chunks(fixture_encoder, chunks)
    alone = np.concatenate([encode_chunks(fixture_encoder, [c]) for c in chunks])
    cosines = np.sum(batch * alone, axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_random_weights_are_discriminative(fixture_encoder: NemoEncoder) -> None:
    """The fixtures would prove little if BatchNorm were left at identity (TitaNet then maps
    every input to nearly one embedding): different speakers must get clearly different
    embeddings, and a network with BatchNorm reset to identity must not match the real one."""
    data = require_data()
    voices = sorted((data / "librispeech" / "singles").rglob("*.flac"))[:12]
    embs = embed_paths(fixture_encoder, voices)
    matrix = np.stack([embs[p] for p in voices])
    off_diagonal = (matrix @ matrix.T)[~np.eye(len(voices), dtype=bool)]
    assert off_diagonal.mean() < 0.9, off_diagonal.mean()


def test_channels_last_depthwise_convolution_is_conv1d() -> None:
    """The Jasper encoder's depthwise convolution (shifted multiply-adds) against torch's."""
    from speakerdb.model._nemo_nets import _depthwise

    generator = torch.Generator().manual_seed(0)
    for k in (1, 3, 7, 15):
        for dilation in (1, 2):
            for frames in (1, 4, 50):
                x = torch.randn(2, frames, 6, generator=generator)
                w = torch.randn(6, 1, k, generator=generator)
                expected = torch.nn.functional.conv1d(
                    x.transpose(1, 2),
                    w,
                    padding=dilation * (k - 1) // 2,
                    dilation=dilation,
                    groups=6,
                ).transpose(1, 2)
                got = _depthwise(x, w[:, 0, :].T.contiguous(), dilation)
                torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_batchnorm_is_not_identity_in_fixtures() -> None:
    for name in MODELS:
        state = _fixture_state(name)
        scales = [v for k, v in state.items() if k.endswith("running_var")]
        assert scales and not all(torch.allclose(v, torch.ones_like(v)) for v in scales), name


def test_resample_is_librosa_default() -> None:
    """NeMo's get_embedding resamples with librosa.resample's defaults; ours must give the
    very same samples (librosa is not a dependency of speakerdb, so skip without it)."""
    librosa = pytest.importorskip("librosa")
    data = require_data()
    encoder = load_nemo(FIXTURES / "titanet-small.nemo")
    samples, rate = sf.read(data / "telephone" / "vctk" / "p225" / "p225_003.wav")
    ours = encoder.resample(samples.astype(np.float32), rate)
    theirs = librosa.resample(samples, orig_sr=rate, target_sr=16_000).astype(np.float32)
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
    for odd in (11_025, 44_100, 48_000):
        x = np.sin(np.arange(odd + 3) * 0.01).astype(np.float32)
        expected = librosa.resample(x.astype(np.float64), orig_sr=odd, target_sr=16_000)
        assert np.array_equal(encoder.resample(x, odd), expected.astype(np.float32))


# --- archives: content sniffing and hostile files -------------------------------------------------


def _fixture_members(name: str = "titanet-small") -> dict[str, bytes]:
    members = {}
    with tarfile.open(FIXTURES / f"{name}.nemo") as tar:
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                members[member.name.removeprefix("./")] = handle.read()
    return members


def _fixture_state(name: str) -> dict[str, torch.Tensor]:
    weights = _fixture_members(name)["model_weights.ckpt"]
    state: dict[str, torch.Tensor] = torch.load(io.BytesIO(weights), weights_only=True)
    return state


def _config(name: str = "titanet-small") -> dict:
    loaded: dict = yaml.safe_load(_fixture_members(name)["model_config.yaml"])
    return loaded


def _pack(path: Path, members: dict[str, bytes], compress: bool = False) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    return path


def _with_config(path: Path, config: dict, name: str = "titanet-small") -> Path:
    members = _fixture_members(name)
    members["model_config.yaml"] = yaml.safe_dump(config).encode()
    return _pack(path, {"./" + k: v for k, v in members.items()})


def _refused(path: Path, *fragments: str) -> str:
    with pytest.raises(ModelError) as info:
        load_nemo(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_sniffing_by_content_not_name(tmp_path: Path) -> None:
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes((FIXTURES / "titanet-small.nemo").read_bytes())
    assert is_nemo_archive(renamed)
    assert is_nemo_archive(_pack(tmp_path / "old.model", _fixture_members(), compress=True))
    assert not is_nemo_archive(_pack(tmp_path / "other.nemo", {"readme.txt": b"hello"}))
    (tmp_path / "text.nemo").write_text("model_config.yaml\n" * 100)
    assert not is_nemo_archive(tmp_path / "text.nemo")
    (tmp_path / "random.nemo").write_bytes(np.random.default_rng(0).bytes(5000))
    assert not is_nemo_archive(tmp_path / "random.nemo")
    assert not is_nemo_archive(tmp_path / "missing.nemo")
    assert not is_nemo_archive(tmp_path)


def test_gzip_archive_of_old_nemo_versions_loads_the_same(tmp_path: Path) -> None:
    old = load_nemo(_pack(tmp_path / "old.nemo", _fixture_members(), compress=True))
    new = load_nemo(FIXTURES / "titanet-small.nemo")
    features = new.prepare(np.sin(np.arange(24_000) * 0.05).astype(np.float32))[0][None]
    lengths = torch.tensor([features.shape[1]])
    assert torch.equal(old.encode(features, lengths), new.encode(features, lengths))


def _raw_member(name: str, kind: bytes, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = link
    return info


def _hostile(path: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """The fixture's members plus ``extra`` ones written as given (headers may lie)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.GNU_FORMAT) as tar:
        for info, data in extra:
            if data is None:  # a header only: its declared data never follows
                buffer.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
                break
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
        else:
            for name, data in _fixture_members().items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return path


HOSTILE = {
    "symbolic link": (
        [_raw_member("./model_config.yaml", tarfile.SYMTYPE, link="/etc/passwd")],
        "symbolic link",
    ),
    "hard link": ([_raw_member("./x", tarfile.LNKTYPE, link="/etc/shadow")], "hard link"),
    "character device": ([_raw_member("./tty", tarfile.CHRTYPE)], "character device"),
    "block device": ([_raw_member("./sda", tarfile.BLKTYPE)], "block device"),
    "FIFO": ([_raw_member("./pipe", tarfile.FIFOTYPE)], "FIFO"),
    "absolute path": ([_raw_member("/etc/cron.d/x", tarfile.REGTYPE)], "absolute"),
    "parent directory": ([_raw_member("../../evil.py", tarfile.REGTYPE)], "'..'"),
    "parent inside a path": ([_raw_member("./a/../../evil", tarfile.REGTYPE)], "'..'"),
    "windows path": ([_raw_member("C:\\evil.dll", tarfile.REGTYPE)], "non-POSIX"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused(case: str, tmp_path: Path) -> None:
    infos, fragment = HOSTILE[case]
    path = _hostile(tmp_path / "hostile.nemo", [(info, b"") for info in infos])
    _refused(path, "refusing NeMo archive", fragment)
    assert not (tmp_path / "evil.py").exists()


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    members = {"./" + k: v for k, v in _fixture_members().items()}
    path = tmp_path / "dup.nemo"
    _pack(path, members)
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo("model_config.yaml")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"a: 1"))
    _refused(path, "appears twice")


def test_absurd_declared_size_is_refused_before_reading(tmp_path: Path) -> None:
    huge = _raw_member("./model_weights.ckpt", tarfile.REGTYPE, size=100 << 30)
    path = _hostile(tmp_path / "huge.nemo", [(huge, None)])
    assert path.stat().st_size < 64 << 10  # the declared 100 GiB are not there
    _refused(path, "declares 107374182400 bytes")


def test_oversized_extended_header_is_refused(tmp_path: Path) -> None:
    pax = _raw_member("././@PaxHeader", tarfile.XHDTYPE, size=1 << 30)
    path = _hostile(tmp_path / "pax.nemo", [(pax, None)])
    _refused(path, "oversized header")


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    members = {f"./junk/{i}.txt": b"x" for i in range(600)}
    _refused(_pack(tmp_path / "many.nemo", members), "more than 512 members")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "not a readable .nemo archive"),
        (b"this is not an archive" * 50, "not a readable .nemo archive"),
        (None, "model file not found"),
    ],
)
def test_unreadable_files_are_refused(content: bytes | None, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "model.nemo"
    if content is not None:
        path.write_bytes(content)
    _refused(path, fragment)


def test_truncated_archive_is_refused(tmp_path: Path) -> None:
    data = (FIXTURES / "titanet-small.nemo").read_bytes()
    path = tmp_path / "cut.nemo"
    path.write_bytes(data[: len(data) // 2])
    _refused(path)


def test_missing_members_are_refused(tmp_path: Path) -> None:
    members = _fixture_members()
    _refused(
        _pack(tmp_path / "a.nemo", {"model_weights.ckpt": members["model_weights.ckpt"]}),
        "no model_config.yaml",
    )
    _refused(
        _pack(tmp_path / "b.nemo", {"model_config.yaml": members["model_config.yaml"]}),
        "no top-level model_weights.ckpt",
    )


def test_yaml_python_tags_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    members = _fixture_members()
    members["model_config.yaml"] = (
        f'preprocessor: !!python/object/apply:os.system ["touch {marker}"]\n'.encode()
    )
    _refused(_pack(tmp_path / "tag.nemo", members), "not valid plain YAML")
    assert not marker.exists()


class _Payload:
    """Pickled, it would run a command on load: torch.load(weights_only=True) must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickled_code_in_weights_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"encoder.x": _Payload(marker)}, buffer)
    members = _fixture_members()
    members["model_weights.ckpt"] = buffer.getvalue()
    _refused(_pack(tmp_path / "pickle.nemo", members), "not a plain tensor checkpoint")
    assert not marker.exists()


def test_other_nemo_models_are_refused(tmp_path: Path) -> None:
    config = _config()
    config["target"] = "nemo.collections.asr.models.ctc_models.EncDecCTCModel"
    _refused(_with_config(tmp_path / "ctc.nemo", config), "EncDecCTCModel", "not a speaker")


# --- configs and weights this loader does not reproduce exactly ---------------------------------


def _set(config: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    node: object = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value  # type: ignore[index]


UNSUPPORTED = [
    ("encoder.conv_mask", False),
    ("encoder.normalization_mode", "group"),
    ("encoder.activation", "tanh"),
    ("encoder.jasper.1.stride", [2]),
    ("encoder.jasper.1.groups", 4),
    ("encoder.jasper.2.residual_dense", True),
    ("encoder.jasper.2.future_context", 3),
    ("encoder.jasper.0.heads", 2),
    ("encoder._target_", "nemo.collections.asr.modules.ConformerEncoder"),
    ("preprocessor.frame_splicing", 3),
    ("preprocessor.pad_to", "max"),
    ("preprocessor.window", "none"),
    ("preprocessor.normalize", "fixed_mean"),
    ("preprocessor.log_zero_guard_type", "multiply"),
    ("preprocessor._target_", "nemo.collections.asr.modules.AudioToMFCCPreprocessor"),
    ("preprocessor.mystery_option", 1),
    ("decoder.pool_mode", "gram"),
    ("decoder.emb_sizes", "large"),
]


@pytest.mark.parametrize(("field", "value"), UNSUPPORTED, ids=[f for f, _ in UNSUPPORTED])
def test_unsupported_config_values_are_refused(field: str, value: object, tmp_path: Path) -> None:
    config = _config()
    _set(config, field, value)
    message = _refused(_with_config(tmp_path / "odd.nemo", config), "unsupported", field)
    assert repr(value) in message


def test_old_hydra_config_layout_loads(tmp_path: Path) -> None:
    """NeMo < 1.0 wrote module configs as ``cls`` + ``params``; NeMo converts them."""
    config = _config()
    pre = config["preprocessor"]
    config["preprocessor"] = {"cls": pre.pop("_target_"), "params": pre}
    old = load_nemo(_with_config(tmp_path / "old.nemo", config))
    new = load_nemo(FIXTURES / "titanet-small.nemo")
    samples = np.sin(np.arange(20_000) * 0.03).astype(np.float32)
    assert torch.equal(old.prepare(samples)[0], new.prepare(samples)[0])


def _with_state(path: Path, state: dict[str, torch.Tensor]) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    members = _fixture_members()
    members["model_weights.ckpt"] = buffer.getvalue()
    return _pack(path, members)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    state = _fixture_state("titanet-small")
    key = "encoder.encoder.1.mconv.1.conv.weight"
    missing = {k: v for k, v in state.items() if k != key}
    _refused(_with_state(tmp_path / "a.nemo", missing), key, "missing")
    extra = {**state, "encoder.encoder.9.mconv.0.conv.weight": torch.zeros(3)}
    _refused(_with_state(tmp_path / "b.nemo", extra), "unexpected weight encoder.encoder.9")
    reshaped = {**state, key: state[key][:, :, :].repeat(1, 2, 1)}
    _refused(_with_state(tmp_path / "c.nemo", reshaped), key, "shape")
    poisoned = {**state, key: state[key].clone().fill_(float("nan"))}
    _refused(_with_state(tmp_path / "d.nemo", poisoned), key, "NaN")


def test_fixtures_are_small() -> None:
    for name in MODELS:
        assert (FIXTURES / f"{name}.nemo").stat().st_size < 4 << 20
