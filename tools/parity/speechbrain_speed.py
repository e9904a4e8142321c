"""Speed of the "speechbrain" family against SpeechBrain's own per-file inference.

    PYTHONPATH=. /work/main/.venv/bin/python tools/parity/speechbrain_speed.py \
        --model /tmp/sb-full/ecapa-full --ref-python /work/refenv/sbws/bin/python

The model folder comes from ``make_speechbrain_reference.py --size full`` (the model card's
C=1024 ECAPA-TDNN). The original: ``EncoderClassifier.load_audio`` + ``encode_batch`` per file,
as users call it. speakerdb: decode + resample + front end + encoder, file by file and in
length-sorted padded batches, in this process, on the same files, with the same number of
torch threads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _speed
from parity_audio import default_data

from speakerdb.model._speechbrain import load_speechbrain

ORIGINAL = """
import json, sys, tempfile, time, torch
from speechbrain.inference.speaker import EncoderClassifier
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
with tempfile.TemporaryDirectory() as savedir:
    clf = EncoderClassifier.from_hparams(
        source=args["model"], savedir=savedir, overrides={"pretrained_path": args["model"]}
    )
    clf.encode_batch(clf.load_audio(args["files"][0])[None])
    start = time.perf_counter()
    for path in args["files"]:
        clf.encode_batch(clf.load_audio(path)[None])
    print(json.dumps({"load_audio + encode_batch per file": time.perf_counter() - start}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--ref-python", default="/work/refenv/sbws/bin/python")
    parser.add_argument("--data", type=Path, default=default_data(_speed.ROOT))
    parser.add_argument("--files", type=int, default=80)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=2, help="original/ours alternations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = _speed.speed_files(args.data, args.files)
    seconds = _speed.audio_seconds(paths)
    encoder = load_speechbrain(args.model)
    spec = {
        "model": str(args.model.resolve()),
        "files": [str(p) for p in paths],
        "threads": args.threads,
    }
    original, ours = _speed.alternate(
        args.rounds,
        lambda: _speed.run_original(args.ref_python, ORIGINAL, spec),
        lambda: {
            "per file": _speed.time_ours(encoder, paths, 1),
            "batches of 8 (length-sorted)": _speed.time_ours(encoder, paths, 8),
            f"{args.threads} threads x 1 torch thread, per file": _speed.time_ours_parallel(
                encoder, paths, args.threads
            ),
        },
    )
    _speed.report("speechbrain", seconds, original, ours)


if __name__ == "__main__":
    main()
