"""Model layer: audio decoding, speech checks, model families and the batched Embedder.

Knows nothing of SQL. Private modules; the public names are exported by :mod:`speakerdb`.
"""
