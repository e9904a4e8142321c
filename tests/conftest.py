from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model():
    """The bundled GE2E model on CPU (loaded once per test session)."""
    from speakerdb import load_model

    return load_model(device="cpu")
