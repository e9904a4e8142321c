"""The countermeasure's fast path computes what the plain network does.

The prepared network (BatchNorm folded, channels-last, the front end and the wide residual
blocks computed in pieces, the pieces on a thread pool) against the plain one, as the
original computes it; batched logits against one probe at a time; audio scored twice runs
the network once. The encoder's output is compared on random weights (no data needed); the
logits on the trained AASIST-L (random weights give every input the same logits), skipped
without them. Parity with the original code on real speech is tests/test_spoof.py's.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_spoof import random_state, require_weights, save

from speakerdb import load_countermeasure
from speakerdb.model import _countermeasure
from speakerdb.model._aasist import AASIST_CONFIGS, DEFAULT_TILE, AasistNet

TOLERANCE = 1e-5
"""Largest logit difference between two ways of computing the same network: float32
summation order only (measured ~2e-6 on the trained weights)."""


def plain_and_prepared(state: dict[str, torch.Tensor]) -> tuple[AasistNet, AasistNet]:
    plain = AasistNet(AASIST_CONFIGS["AASIST-L"])
    plain.load_state_dict(state)
    plain.eval()
    return plain, copy.deepcopy(plain).prepare_for_inference()


def trained_state() -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(
        require_weights("AASIST-L"), map_location="cpu", weights_only=True
    )
    return state


def waves(count: int, seed: int = 0) -> np.ndarray:
    """(count, nb_samp) float32: a tone of a different pitch and loudness each, in noise
    (white noise alone gives random weights the same logits whatever its draw)."""
    rng = np.random.default_rng(seed)
    samples = AASIST_CONFIGS["AASIST-L"].nb_samp
    t = np.arange(samples) / 16_000
    rows = [
        rng.uniform(0.1, 0.5)
        * np.sin(2 * np.pi * rng.uniform(100, 6000) * t)
        * (1 + np.sin(2 * np.pi * rng.uniform(1, 8) * t))
        + 0.01 * rng.standard_normal(samples)
        for _ in range(count)
    ]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("tile", [48, DEFAULT_TILE])
def test_pieces_compute_what_the_whole_width_does(tile):
    """The encoder's output, plain vs prepared. 48 frames per piece for a batch of 2 cuts
    every block into pieces, the 795-frame one (a multiple of 3, so its last piece ends at
    the input's edge) included."""
    plain, prepared = plain_and_prepared(random_state("AASIST-L", seed=3))
    prepared.tile = tile
    x = torch.from_numpy(waves(2))
    with torch.inference_mode():
        reference = plain._encode(x, None)
        serial = prepared._encode(x, None)
        with ThreadPoolExecutor(2) as pool:
            threaded = prepared._encode(x, pool)
    assert torch.equal(serial, threaded)  # the same pieces, whichever thread ran them
    assert (serial - reference).abs().max() <= TOLERANCE
    assert (reference[0] - reference[1]).abs().max() > 100 * TOLERANCE  # inputs told apart


@pytest.mark.parametrize("tile", [48, DEFAULT_TILE])
def test_prepared_logits_equal_the_plain_networks(tile):
    plain, prepared = plain_and_prepared(trained_state())
    prepared.tile = tile
    x = torch.from_numpy(waves(2))
    with torch.inference_mode(), ThreadPoolExecutor(2) as pool:
        reference, fast = plain(x), prepared(x, pool)
    assert (fast - reference).abs().max() <= TOLERANCE
    assert (reference[0] - reference[1]).abs().max() > 100 * TOLERANCE


def test_batched_logits_equal_one_probe_at_a_time():
    cm = load_countermeasure(require_weights("AASIST-L"))
    batch = waves(3, seed=1)
    together = cm.logits(batch)
    alone = np.concatenate([cm.logits(wave[None]) for wave in batch])
    assert np.abs(together - alone).max() <= TOLERANCE
    assert np.abs(together[0] - together[1]).max() > 100 * TOLERANCE


def test_audio_scored_twice_runs_the_network_once(tmp_path, monkeypatch):
    cm = load_countermeasure(save(tmp_path, random_state("AASIST-L", seed=5)))
    passes: list[int] = []
    cm.net.register_forward_hook(lambda module, args, out: passes.append(out.shape[0]))
    a, b, c = waves(3, seed=2)
    first = cm.score([a, b, a])
    assert sum(passes) == 2  # a repeated within one call: once
    again = cm.score([b, a])
    assert sum(passes) == 2  # both remembered
    assert [s.score for s in again] == [first[1].score, first[0].score]
    assert first[0].llr_input == first[2].llr_input
    # Bounded: with room for one recording, scoring c forgets a and b.
    monkeypatch.setattr(_countermeasure, "MEMO_ENTRIES", 1)
    cm.score([c])
    cm.score([a])
    assert sum(passes) == 4
