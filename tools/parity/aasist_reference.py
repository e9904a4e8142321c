"""AASIST parity: reference logits from the ORIGINAL clovaai/aasist code, and the spread of ours.

Two sub-commands:

``reference`` runs in a separate environment holding only torch, numpy and soundfile (never
speakerdb's), imports ``models/AASIST.py`` from a checkout of clovaai/aasist given on the
command line, and evaluates each recording exactly as the original evaluation does
(``soundfile.read`` float64, the first 64 600 samples or the signal repeated until long
enough, ``Tensor`` float32, ``model.eval()``, output logits). Writes a JSON fixture::

    python tools/parity/aasist_reference.py reference --original /tmp/aasist \\
        --weights ../shared/models/aasist --data ../shared/data \\
        --out tests/fixtures/aasist-reference.json

``spread`` runs speakerdb's own implementation (the project venv) on the fixture's files and
prints the largest logit difference; run it under different settings to measure how far the
numbers move with threads and instruction sets (docs/spoofing.md, "Parity")::

    python tools/parity/aasist_reference.py spread --threads 2 \\
        --fixture tests/fixtures/aasist-reference.json --weights ... --data ...

Only 16 kHz recordings are used, so that both sides read the same samples without resampling.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

# Which recordings (relative to the data folder): bona fide read speech of both wideband
# sets (short VCTK files exercise the repetition padding, long LibriSpeech ones the cut) and
# every 16 kHz attack kind of the spoof development set.
FILES = (
    "librispeech/test-other/1688/1688-142285-0004.flac",
    "librispeech/test-other/1998/1998-15444-0000.flac",
    "librispeech/test-other/2033/2033-164914-0000.flac",
    "vctk/p225/p225_003.wav",
    "vctk/p226/p226_008.wav",
    "vctk/p227/p227_005.wav",
    "spoof/griffin_lim/1688/1688-142285-0001.wav",
    "spoof/griffin_lim/p225/p225_008.wav",
    "spoof/griffin_lim/p226/p226_005.wav",
    "spoof/mel_inversion/1688/1688-142285-0001.wav",
    "spoof/mel_inversion/p225/p225_008.wav",
    "spoof/mel_inversion/p226/p226_022.wav",
    "spoof/flite/awb_0.wav",
    "spoof/flite/rms_1.wav",
    "spoof/flite/slt_2.wav",
    "spoof/flite/kal16_3.wav",
)
VARIANTS = ("AASIST", "AASIST-L")
NB_SAMP = 64600


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _existing(data: Path) -> list[str]:
    missing = [f for f in FILES if not (data / f).is_file()]
    if missing:
        sys.exit(f"missing recordings under {data}: {missing}")
    return list(FILES)


def reference(args: argparse.Namespace) -> None:
    import numpy as np
    import soundfile as sf
    import torch

    sys.path.insert(0, str(args.original))
    from models.AASIST import Model  # the original code, from the checkout given

    torch.set_num_threads(args.threads)
    files = _existing(args.data)
    out: dict[str, object] = {
        "what": "logits (spoof, bona fide) of clovaai/aasist models/AASIST.py on these files",
        "original_commit": args.commit,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": args.threads,
        "nb_samp": NB_SAMP,
        "files": [{"path": f, "sha256": _sha256(args.data / f)} for f in files],
        "models": {},
    }
    for variant in VARIANTS:
        conf = json.loads((args.weights / f"{variant}.conf").read_text())["model_config"]
        model = Model(conf)
        weights = args.weights / f"{variant}.pth"
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        logits = []
        for f in files:
            x, rate = sf.read(str(args.data / f))
            assert rate == 16000 and x.ndim == 1, f
            # The original evaluation's pad(): cut, or tile until long enough.
            if x.shape[0] >= NB_SAMP:
                x = x[:NB_SAMP]
            else:
                x = np.tile(x, (1, NB_SAMP // x.shape[0] + 1))[:, :NB_SAMP][0]
            with torch.no_grad():
                _, y = model(torch.Tensor(x)[None])
            logits.append([float(v) for v in y[0]])
        out["models"][variant] = {"weights_sha256": _sha256(weights), "logits": logits}  # type: ignore[index]
        print(variant, "done", file=sys.stderr)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


def spread(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from speakerdb.model._countermeasure import load_countermeasure

    torch.set_num_threads(args.threads)
    fixture = json.loads(args.fixture.read_text())
    paths = [args.data / item["path"] for item in fixture["files"]]
    report = {"threads": args.threads, "tag": args.tag}
    for variant, ref in fixture["models"].items():
        cm = load_countermeasure(args.weights / f"{variant}.pth")
        results = cm.score(paths)
        ours = np.array([[r.score - r.llr_input, r.score] for r in results])  # type: ignore[operator]
        theirs = np.array(ref["logits"])
        report[variant] = float(np.abs(ours - theirs).max())
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="run the original code (separate environment)")
    ref.add_argument("--original", type=Path, required=True, help="clovaai/aasist checkout")
    ref.add_argument("--commit", default="", help="its commit, recorded in the fixture")
    ref.add_argument("--out", type=Path, required=True)
    ours = sub.add_parser("spread", help="largest logit difference of ours from the fixture")
    ours.add_argument("--fixture", type=Path, required=True)
    ours.add_argument("--tag", default="default")
    for p in (ref, ours):
        p.add_argument("--weights", type=Path, required=True, help="folder of AASIST*.pth/.conf")
        p.add_argument("--data", type=Path, required=True, help="the shared data folder")
        p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    reference(args) if args.command == "reference" else spread(args)


if __name__ == "__main__":
    main()
