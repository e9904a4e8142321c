"""Choosing the torch device: CUDA when present, otherwise CPU; an explicit choice wins."""

from __future__ import annotations

import torch

from speakerdb.errors import ConfigurationError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` -> the current CUDA device if available, else CPU. Otherwise ``device`` as
    given ("cpu", "cuda:1", a torch.device), checked to exist. Raises ConfigurationError."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(f"invalid device {device!r}: {exc}") from None
    if chosen.type == torch.device("cuda").type:
        if not torch.cuda.is_available():
            raise ConfigurationError(f"device {device!r} requested but CUDA is not available")
        index = chosen.index if chosen.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigurationError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
        return torch.device(chosen.type, index)
    return chosen
