"""Model layer: audio decoding, GE2E preprocessing and encoder, the Embedder.

Knows nothing of SQL. Importing this package does not import torch; :func:`load_model` does.
"""

from speakerdb.model.registry import DEFAULT_MODEL, available_models, load_model, model_identity

__all__ = ["DEFAULT_MODEL", "available_models", "load_model", "model_identity"]
