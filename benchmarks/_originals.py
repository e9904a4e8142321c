"""The original frameworks' own per-file inference, timed in THEIR environment.

Run by ``embed_throughput.py --model PATH --reference-python PY`` as ``PY _originals.py SPEC``
(SPEC: JSON with family, model, model_dir, files); never imported by speakerdb, and it imports
nothing of speakerdb. It loads the model once, embeds one file as a warm-up, prints
``@speakerdb-bench {"ready": [names]}``, then for each line ``{"threads": N}`` on stdin sets
``torch.set_num_threads(N)`` (and onnxruntime's intra-op threads), embeds one file untimed
(oneDNN/ORT caches per thread count), times one pass over every file per original and prints
``{name: seconds}`` -- one JSON line per request. EOF ends it.

The originals, as their users call them file by file:
  * nemo: ``EncDecSpeakerLabelModel.restore_from(...).get_embedding(path)`` (NeMo reads with
    soundfile and resamples with librosa itself);
  * speechbrain: ``EncoderClassifier.load_audio(path)`` + ``encode_batch`` of that one file;
  * onnx (WeSpeaker): ``Speaker.extract_embedding(path)`` of WeSpeaker's CLI (torchaudio load,
    resample, fbank, its torch ResNet) on the checkpoint folder the ONNX file was exported
    from, and its ``bin/infer_onnx.py`` recipe (torchaudio load, x32768, fbank, CMN,
    onnxruntime) on the ONNX file itself.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "@speakerdb-bench "  # marks our replies among what the frameworks print


def nemo(spec: dict) -> dict[str, Callable[[str], object]]:
    from nemo.collections.asr.models import EncDecSpeakerLabelModel

    net = EncDecSpeakerLabelModel.restore_from(spec["model"], map_location="cpu")
    net.eval()
    return {"NeMo get_embedding": net.get_embedding}


def speechbrain(spec: dict) -> dict[str, Callable[[str], object]]:
    from speechbrain.inference.speaker import EncoderClassifier

    savedir = tempfile.mkdtemp(prefix="sb-bench-")
    clf = EncoderClassifier.from_hparams(
        source=spec["model"], savedir=savedir, overrides={"pretrained_path": spec["model"]}
    )
    return {
        "SpeechBrain load_audio + encode_batch": lambda path: clf.encode_batch(
            clf.load_audio(path)[None]
        )
    }


def wespeaker(spec: dict) -> dict[str, Callable[[str], object]]:
    import onnxruntime as ort
    import torch
    import torchaudio
    import torchaudio.compliance.kaldi as kaldi

    sys.path.insert(0, str(ROOT / "tools" / "parity"))
    import _wespeaker  # WeSpeaker's CLI with an fbank-only front-end table

    runners: dict[str, Callable[[str], object]] = {}
    if spec.get("model_dir"):
        speaker = _wespeaker.Speaker(spec["model_dir"])
        runners["WeSpeaker Speaker.extract_embedding (torch)"] = speaker.extract_embedding
    sessions: dict[int, object] = {}

    def session() -> ort.InferenceSession:  # one per thread count: ORT fixes it at creation
        threads = torch.get_num_threads()
        if threads not in sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            sessions[threads] = ort.InferenceSession(spec["model"], sess_options=options)
        return sessions[threads]

    def infer_onnx(path: str) -> object:
        waveform, rate = torchaudio.load(path)
        mat = kaldi.fbank(
            waveform * (1 << 15),
            num_mel_bins=80,
            frame_length=25,
            frame_shift=10,
            dither=0.0,
            sample_frequency=rate,
            window_type="hamming",
            use_energy=False,
        )
        mat = mat - torch.mean(mat, dim=0)
        return session().run(output_names=["embs"], input_feed={"feats": mat[None].numpy()})

    runners["WeSpeaker infer_onnx.py recipe (onnxruntime)"] = infer_onnx
    return runners


def main() -> None:
    import torch

    spec = json.loads(sys.argv[1])
    files: list[str] = spec["files"]
    runners = {"nemo": nemo, "speechbrain": speechbrain, "onnx": wespeaker}[spec["family"]](spec)
    with torch.inference_mode():
        for run in runners.values():
            run(files[0])
    print(PREFIX + json.dumps({"ready": list(runners)}), flush=True)
    for line in sys.stdin:
        threads = int(json.loads(line)["threads"])
        torch.set_num_threads(threads)
        out: dict[str, float] = {}
        with torch.inference_mode():
            for name, run in runners.items():
                run(files[0])  # warm-up at this thread count, untimed
                start = time.perf_counter()
                for path in files:
                    run(path)
                out[name] = time.perf_counter() - start
        print(PREFIX + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
