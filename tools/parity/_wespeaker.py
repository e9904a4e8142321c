"""Imports WeSpeaker's own inference code (wespeaker.cli.speaker) in the reference environment.

wespeaker.cli.speaker imports wespeaker.frontend, whose SSL/Whisper/w2v-BERT front ends need
s3prl, openai-whisper and transformers; s3prl 0.4 no longer imports under torchaudio 2.9. Only
the "fbank" front end is used here (ResNet models), and WeSpeaker's code handles it without any
front-end class (frontend_class_dict["fbank"] is None), so an fbank-only `wespeaker.frontend`
module is registered before the import. Everything else is WeSpeaker's unmodified code.
Reference environment only (tools/parity/setup_speechbrain_wespeaker_env.sh).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

_spec = importlib.util.find_spec("wespeaker")  # locates the package without running it
assert _spec is not None and _spec.submodule_search_locations, "wespeaker is not installed"
frontend = types.ModuleType("wespeaker.frontend")
frontend.frontend_class_dict = {"fbank": None}  # type: ignore[attr-defined]
# Submodules that need no extra package (tfmel, used by redimnet2) still import from disk.
frontend.__path__ = [os.path.join(_spec.submodule_search_locations[0], "frontend")]  # type: ignore[attr-defined]
sys.modules.setdefault("wespeaker.frontend", frontend)

from wespeaker.cli import speaker  # noqa: E402
from wespeaker.models import resnet  # noqa: E402

Speaker = speaker.Speaker
load_model_pt = speaker.load_model_pt

__all__ = ["Speaker", "load_model_pt", "resnet", "speaker"]
