"""Speed of the "onnx" family against WeSpeaker's own per-file extraction.

    PYTHONPATH=. /work/main/.venv/bin/python tools/parity/wespeaker_speed.py \
        --model /tmp/ws-full/wespeaker-resnet34-full.onnx \
        --model-dir /tmp/ws-full/wespeaker-resnet34-full-modeldir \
        --ref-python /work/refenv/sbws/bin/python

Both come from ``make_wespeaker_reference.py --size full`` (ResNet34, 32 base channels, 256-d).
The originals, in the reference environment: WeSpeaker's ``Speaker.extract_embedding(path)``
(its CLI's per-file extraction: torchaudio.load, resample, fbank, torch model) and its
bin/infer_onnx.py recipe (torchaudio.load, x32768, fbank, CMN, onnxruntime) on the exported
graph. speakerdb: decode + resample + fbank + onnxruntime, per file, in this process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _speed
from parity_audio import default_data

from speakerdb.model._onnx import load_onnx

ORIGINAL = """
import json, sys, time, torch
sys.path.insert(0, "tools/parity")
import _wespeaker
import onnxruntime as ort
import torchaudio
import torchaudio.compliance.kaldi as kaldi
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
speaker = _wespeaker.Speaker(args["model_dir"])
speaker.extract_embedding(args["files"][0])
start = time.perf_counter()
for path in args["files"]:
    speaker.extract_embedding(path)
t_cli = time.perf_counter() - start
so = ort.SessionOptions()
so.intra_op_num_threads = args["threads"]
so.inter_op_num_threads = 1
session = ort.InferenceSession(args["model"], sess_options=so)
def infer(path):
    waveform, rate = torchaudio.load(path)
    mat = kaldi.fbank(waveform * (1 << 15), num_mel_bins=80, frame_length=25, frame_shift=10,
                      dither=0.0, sample_frequency=rate, window_type="hamming", use_energy=False)
    mat = mat - torch.mean(mat, dim=0)
    return session.run(output_names=["embs"], input_feed={"feats": mat.unsqueeze(0).numpy()})
infer(args["files"][0])
start = time.perf_counter()
for path in args["files"]:
    infer(path)
t_onnx = time.perf_counter() - start
print(json.dumps({"Speaker.extract_embedding (torch)": t_cli,
                  "infer_onnx.py recipe (onnxruntime)": t_onnx}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--ref-python", default="/work/refenv/sbws/bin/python")
    parser.add_argument("--data", type=Path, default=default_data(_speed.ROOT))
    parser.add_argument("--files", type=int, default=80)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=2, help="original/ours alternations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = _speed.speed_files(args.data, args.files)
    seconds = _speed.audio_seconds(paths)
    encoder = load_onnx(args.model, threads=args.threads)
    single = load_onnx(args.model, threads=1)
    spec = {
        "model": str(args.model.resolve()),
        "model_dir": str(args.model_dir.resolve()),
        "files": [str(p) for p in paths],
        "threads": args.threads,
    }
    original, ours = _speed.alternate(
        args.rounds,
        lambda: _speed.run_original(args.ref_python, ORIGINAL, spec),
        lambda: {
            "per file": _speed.time_ours(encoder, paths, 1),
            f"{args.threads} threads x 1-thread session, per file": _speed.time_ours_parallel(
                single, paths, args.threads
            ),
        },
    )
    _speed.report("onnx", seconds, original, ours)


if __name__ == "__main__":
    main()
