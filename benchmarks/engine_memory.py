"""Peak memory and speed of embedding one long recording: the streaming engine against the
whole-array pipeline of earlier releases (decode everything, resample everything, then
normalise, trim, spectrogram and window whole arrays), in the same run.

Each measurement runs in a fresh interpreter (peak RSS is per process): a generated recording
of real read speech (LibriSpeech files in a loop, 0.5 s pauses) at 16 kHz and at 44.1 kHz.
Real-time factor = audio seconds / wall seconds. Prints a summary, then one JSON line.

    python benchmarks/engine_memory.py [--minutes 10 60] [--rates 16000 44100] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, ROOT, emit

_ENGINE = """
import sys, time
from speakerdb import load_model
model = load_model(device="cpu")
start = time.perf_counter()
result = model.embed([sys.argv[1]])[0]
elapsed = time.perf_counter() - start
assert result.ok, result.error
vector = result.vector
"""

# What earlier releases did, with the functions they used (still in the package).
_WHOLE_ARRAY = """
import sys, time
import numpy as np, soundfile as sf, torch, torchaudio
from speakerdb import load_model
from speakerdb.model._preprocess import (
    median_spectral_flatness, mel_spectrogram, normalize_volume, power_spectrogram,
    trim_long_silences)
from speakerdb.model._windows import WINDOW_FRAMES, window_starts
model = load_model(device="cpu")
network = model.encoder.network
start = time.perf_counter()
data, rate = sf.read(sys.argv[1], dtype="float32", always_2d=True)
samples = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
if rate != 16000:
    resampler = torchaudio.transforms.Resample(rate, 16000, lowpass_filter_width=24,
        rolloff=0.945, resampling_method="sinc_interp_kaiser", beta=8.555)
    with torch.inference_mode():
        samples = resampler(torch.from_numpy(samples)[None])[0].numpy()
speech = trim_long_silences(normalize_volume(samples))
real = 1 + speech.size // 160
starts, padded = window_starts(speech.size)
speech = np.pad(speech, (0, padded - speech.size))
with torch.inference_mode():
    power = power_spectrogram(torch.from_numpy(speech))
    median_spectral_flatness(power[:, :real])
    mel = mel_spectrogram(None, power)
    windows = mel[torch.tensor(starts)[:, None] + torch.arange(WINDOW_FRAMES)]
    total = sum(network(windows[i:i + 64]).double().sum(0) for i in range(0, len(windows), 64))
vector = (total / total.norm()).float().numpy()
elapsed = time.perf_counter() - start
"""

_REPORT = """
import json, resource
np_vector = [float(v) for v in vector]
print(json.dumps({"seconds": elapsed, "peak_mb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, "vector": np_vector}))
"""


def make_recording(path: Path, minutes: float, rate: int) -> float:
    """Write ``minutes`` of looped LibriSpeech speech at ``rate`` Hz; returns its seconds."""
    import soxr

    lines = (DATA / "librispeech" / "manifest.jsonl").read_text().splitlines()
    files = [DATA / "librispeech" / json.loads(line)["audio_filepath"] for line in lines]
    target = int(minutes * 60 * rate)
    written = 0
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as out:
        for i in range(10**6):
            if written >= target:
                break
            x, r = sf.read(files[i % len(files)], dtype="float32")
            x = np.concatenate([x, np.zeros(r // 2, np.float32)])
            if rate != r:
                x = soxr.resample(x, r, rate).astype(np.float32)
            x = x[: target - written]
            out.write(x)
            written += x.size
    return written / rate


def measure(script: str, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = textwrap.dedent(script) + textwrap.dedent(_REPORT)
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--rates", type=int, nargs="+", default=[16_000, 44_100])
    parser.add_argument("--no-baseline", action="store_true", help="skip the whole-array run")
    args = parser.parse_args()
    if not (DATA / "librispeech" / "manifest.jsonl").is_file():
        sys.exit(f"no development speech under {DATA}")
    rows = []
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        for minutes in args.minutes:
            for rate in args.rates:
                path = Path(folder) / f"long-{minutes:g}min-{rate}.wav"
                audio = make_recording(path, minutes, rate)
                row: dict = {"minutes": minutes, "rate": rate, "audio_seconds": audio}
                runs = {"engine": _ENGINE} | ({} if args.no_baseline else {"whole": _WHOLE_ARRAY})
                vectors = {}
                for name, script in runs.items():
                    got = measure(script, path)
                    if "error" in got:
                        row[name] = {"error": got["error"]}
                        continue
                    vectors[name] = np.asarray(got["vector"])
                    row[name] = {
                        "peak_mb": round(got["peak_mb"], 1),
                        "x_real_time": round(audio / got["seconds"], 1),
                    }
                if len(vectors) == 2:
                    row["cosine_engine_vs_whole"] = round(
                        float(vectors["engine"] @ vectors["whole"]), 7
                    )
                path.unlink()
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)  # progress
                whole = row.get("whole", {})
                lines.append(
                    f"{minutes:g} min at {rate} Hz: engine {row['engine'].get('peak_mb')} MB "
                    f"peak, {row['engine'].get('x_real_time')} x real time"
                    + (
                        f"; whole-array {whole.get('peak_mb')} MB, "
                        f"{whole.get('x_real_time')} x; cosine "
                        f"{row.get('cosine_engine_vs_whole')}"
                        if whole
                        else ""
                    )
                )
    emit(lines, {"benchmark": "engine_memory", "runs": rows})


if __name__ == "__main__":
    main()
