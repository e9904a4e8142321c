"""How far do the parity embeddings move with the machine? One run per environment.

    PYTHONPATH=. python tools/parity/spread.py run --tag default --out /tmp/spread
    ONEDNN_MAX_CPU_ISA=AVX2 PYTHONPATH=. python tools/parity/spread.py run --tag onednn-avx2 ...
    PYTHONPATH=. python tools/parity/spread.py run --tag fft64 --fft64 ...   # exact FFT
    PYTHONPATH=. python tools/parity/spread.py report /tmp/spread/*.npz

``run`` embeds exactly the inputs the fast parity tests embed (tests/test_model_nemo.py,
test_model_speechbrain.py, test_model_onnx.py; ``--every 1`` for every reference input), with
the tests' thread settings unless ``--threads`` says otherwise, and saves every embedding and
its cosine with the framework's reference. ``--fft64`` computes every FFT of the front ends in
float64 (then rounds to float32): the same pipeline with the FFT's rounding changed, which is
what another CPU's FFT kernels (oneMKL dispatches per CPU vendor and instruction set) do.

``report`` prints, per model and input variant, the worst and median ``1 - cosine`` against the
reference in each run, and the worst between runs; then one JSON line.

Derived inputs (8 kHz, 48 kHz, MP3) are made with soxr's default engine whatever
SOXR_USE_SIMD says, as the tests make them (their bytes must match the references' digests);
speakerdb's own resampling inside the model follows the variable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools" / "parity"))
sys.path.insert(0, str(ROOT))

# name -> (family, fixture, reference, {variant: every n-th input}, torch threads in the test)
SUITES: dict[str, tuple[str, str, str, dict[str, int], int]] = {
    "nemo/titanet-small": (
        "nemo", "nemo/titanet-small.nemo", "nemo/titanet-small.reference.npz",
        {"orig": 1, "8k": 10, "48k": 10, "mp3": 10}, 1,
    ),
    "nemo/speakernet-small": (
        "nemo", "nemo/speakernet-small.nemo", "nemo/speakernet-small.reference.npz",
        {"orig": 4, "8k": 20, "48k": 20, "mp3": 20}, 1,
    ),
    "nemo/ecapa-small": (
        "nemo", "nemo/ecapa-small.nemo", "nemo/ecapa-small.reference.npz",
        {"orig": 4, "8k": 20, "48k": 20, "mp3": 20}, 1,
    ),
    "speechbrain/ecapa-small": (
        "speechbrain", "speechbrain/ecapa-small", "speechbrain/reference-small.npz",
        {"orig": 6, "8k": 30, "48k": 30, "mp3": 30}, 0,
    ),
    "speechbrain/ecapa-small-norm": (
        "speechbrain-norm", "speechbrain/ecapa-small", "speechbrain/reference-small.npz",
        {"orig": 30, "48k": 60}, 0,
    ),
    "onnx/wespeaker-resnet34-small": (
        "onnx", "onnx/wespeaker-resnet34-small.onnx", "onnx/reference-small.npz",
        {"orig": 4, "8k": 20, "48k": 20, "mp3": 20}, 0,
    ),
}  # fmt: skip
FIXTURES = ROOT / "tests" / "fixtures" / "models"


def _exact_fft() -> None:
    """Every FFT the front ends call (torch.stft, torch.fft.rfft) computed in float64."""
    import torch

    stft, rfft = torch.stft, torch.fft.rfft

    def double(a: Any) -> Any:
        return a.double() if isinstance(a, torch.Tensor) else a

    def stft64(x: Any, *args: Any, **kwargs: Any) -> Any:
        args = tuple(double(a) for a in args)
        kwargs = {k: double(v) for k, v in kwargs.items()}
        return stft(x.double(), *args, **kwargs).to(torch.complex64)

    def rfft64(x: Any, *args: Any, **kwargs: Any) -> Any:
        return rfft(x.double(), *args, **kwargs).to(torch.complex64)

    torch.stft = stft64
    torch.fft.rfft = rfft64


def _nemo_rows(
    name: str, every: dict[str, int], data: Path
) -> tuple[list[str], list[Path], np.ndarray]:
    from derived_audio import derive, derived_path, sha256_file
    from parity_audio import cache_dir

    table = np.load(FIXTURES / name, allow_pickle=False)
    keys, paths, refs = [], [], []
    for variant, step in every.items():
        rows = [i for i, v in enumerate(table["variant"]) if str(v) == variant][::step]
        for i in rows:
            folder, rel = str(table["set"][i]), str(table["path"][i])
            path = data / folder / rel
            if variant != "orig":
                path = derived_path(cache_dir() / "nemo-derived", folder, rel, variant)
                if not path.is_file():
                    derive(data / folder / rel, variant, path)
            if sha256_file(path) != str(table["sha256"][i]):
                raise SystemExit(f"{path}: sha256 differs from the reference's input")
            keys.append(f"{folder}/{rel}|{variant}")
            paths.append(path)
            refs.append(table["embedding"][i])
    ref = np.asarray(refs, dtype=np.float32)
    return keys, paths, ref / np.linalg.norm(ref, axis=1, keepdims=True)


def run(args: argparse.Namespace) -> None:
    import torch
    from parity_audio import default_data

    if args.fft64:
        _exact_fft()
    data = default_data(ROOT)
    out: dict[str, np.ndarray] = {}
    meta: dict[str, object] = {
        "tag": args.tag,
        "env": {k: v for k, v in os.environ.items() if k.split("_")[0] in _ENV_PREFIXES},
        "fft64": args.fft64,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    started = time.perf_counter()
    for suite, (family, fixture, reference, every, threads) in SUITES.items():
        if args.only and not any(o in suite for o in args.only):
            continue
        if args.every:
            every = {v: args.every for v in every}
        torch.set_num_threads(args.threads or threads or _default_threads())
        if family == "nemo":
            from nemo_parity import embed_paths

            from speakerdb.model._nemo import load_nemo

            encoder = load_nemo(FIXTURES / fixture)
            keys, paths, ref = _nemo_rows(reference, every, data)
            if args.variants:
                keep = [i for i, k in enumerate(keys) if _variant_of(k) in args.variants]
                keys, paths, ref = [keys[i] for i in keep], [paths[i] for i in keep], ref[keep]
            embedded = embed_paths(encoder, paths)
            ours = np.stack([embedded[p] for p in paths])
        else:
            from encoder_driver import embed_files
            from family_parity import Reference, input_paths

            if family == "onnx":
                from speakerdb.model._onnx import load_onnx

                encoder = load_onnx(FIXTURES / fixture)
                array = "embeddings"
            else:
                from speakerdb.model._speechbrain import load_speechbrain

                norm = family == "speechbrain-norm"
                encoder = load_speechbrain(FIXTURES / fixture, embedding_norm=norm)
                array = "embeddings_normalized" if norm else "embeddings"
            table = Reference(FIXTURES / reference, array)
            items = [i for v, step in every.items() for i in table.items(v, step)]
            if args.variants:
                items = [i for i in items if _variant_of(i.key) in args.variants]
            paths = input_paths(table, items, data)
            ours = embed_files(encoder, paths)
            keys = [i.key for i in items]
            ref = np.stack([table.vector(i) for i in items])
        out[f"{suite}::keys"] = np.array(keys)
        out[f"{suite}::ours"] = ours.astype(np.float32)
        out[f"{suite}::cosine"] = (ours * ref).sum(axis=1)
        print(f"{args.tag} {suite}: {len(keys)} inputs", flush=True)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / f"{args.tag}.npz", meta=json.dumps(meta), **out)  # type: ignore[arg-type]


_ENV_PREFIXES = ("ONEDNN", "DNNL", "ATEN", "MKL", "SOXR", "OMP", "NPY")


def _default_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _variant_of(key: str) -> str:
    """'orig' files of the telephone set are 8 kHz recordings: reported apart."""
    variant = key.rsplit("|", 1)[1]
    return "tel" if variant == "orig" and key.startswith("telephone/") else variant


def report(args: argparse.Namespace) -> None:
    """Per suite and variant: worst / median 1 - cosine against the reference in each run,
    and the worst between any run and the first one given (on the inputs both embedded)."""
    runs: dict[str, dict[str, dict[str, tuple[np.ndarray, float]]]] = {}
    for path in args.runs:
        with np.load(path) as z:
            tag = json.loads(str(z["meta"]))["tag"]
            per_suite: dict[str, dict[str, tuple[np.ndarray, float]]] = {}
            for name in z.files:
                if name.endswith("::keys"):
                    suite = name.split("::")[0]
                    keys = [str(k) for k in z[name]]
                    ours, cos = z[f"{suite}::ours"], z[f"{suite}::cosine"]
                    per_suite[suite] = {k: (ours[i], float(cos[i])) for i, k in enumerate(keys)}
            runs[tag] = per_suite
    base = next(iter(runs))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for suite in sorted({s for r in runs.values() for s in r}):
        print(f"\n{suite}: 1 - cosine, worst/median vs the reference; worst vs run '{base}'")
        have = {t: r[suite] for t, r in runs.items() if suite in r}
        variants = sorted({_variant_of(k) for r in have.values() for k in r})
        for variant in variants:
            row: dict[str, float] = {}
            line = f"  {variant:5s}"
            between = 0.0
            for tag, embedded in have.items():
                keys = [k for k in embedded if _variant_of(k) == variant]
                if not keys:
                    continue
                gap = np.array([1.0 - embedded[k][1] for k in keys])
                row[tag] = float(gap.max())
                line += f"  {tag}[{len(keys)}] {gap.max():.1e}/{np.median(gap):.0e}"
                if base in have and tag != base:
                    common = [k for k in keys if k in have[base]]
                    for k in common:
                        cos = float(embedded[k][0] @ have[base][k][0])
                        between = max(between, 1.0 - cos)
            row["vs_reference_worst"] = max(row.values())
            row["vs_first_run_worst"] = between
            print(line + f"  | vs '{base}' {between:.1e}")
            summary.setdefault(suite, {})[variant] = row
    print(json.dumps({"runs": list(runs), "spread": summary}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--tag", required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--threads", type=int, default=0, help="torch threads (default: the tests')")
    r.add_argument("--every", type=int, default=0, help="every n-th input of each variant")
    r.add_argument("--only", nargs="*", help="suites whose name contains one of these")
    r.add_argument("--fft64", action="store_true")
    r.add_argument("--variants", nargs="*", help="only these (orig 8k 48k mp3; tel: telephone)")
    p = sub.add_parser("report")
    p.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
