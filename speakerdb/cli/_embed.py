"""``speakerdb embed``: voiceprints of files into a .npy array."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import click

from speakerdb import write_private
from speakerdb.cli._common import (
    EXIT_ERROR,
    device_option,
    emit_json,
    error_object,
    handles_errors,
    json_option,
    model_option,
    progress_bar,
    show,
)
from speakerdb.cli._ray import ray_choice, ray_options


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the (N, D) float32 array (.npy), row i for FILE i (mode 0600).",
)
@ray_options("Decode and embed")
@model_option
@device_option
@json_option
@handles_errors
def embed(
    files: tuple[Path, ...],
    out: Path,
    ray_address: str | None,
    ray_workers: int | None,
    ray_files_per_task: int,
    model_name: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Write the voiceprints of FILE(s) to a .npy array (unit-norm rows, in order)."""
    import numpy as np

    ray = ray_choice(ray_address, ray_workers, ray_files_per_task)
    with progress_bar("embedding") as bar:
        if ray is None:
            from speakerdb.model import load_model

            model = load_model(model_name, device)
            label, dimension = model.identity.label, model.dimension
            results = model.embed(list(files), progress=bar)
        else:
            from speakerdb.enroll import embed_on_ray

            identity, results = embed_on_ray(ray, list(files), model_name, progress=bar)
            label, dimension = identity.label, identity.dimension
    failed = [r for r in results if r.error is not None]
    for r in failed:
        assert r.error is not None
        if not as_json:
            click.echo(f"error: {r.error.message}", err=True)
    vectors = [r.vector for r in results if r.vector is not None]
    if not failed:
        # Voiceprints are biometric data: the file is 0600, replaced atomically.
        buffer = io.BytesIO()
        np.save(buffer, np.stack(vectors).astype(np.float32))
        write_private(out, buffer.getvalue())
    if as_json:
        emit_json(
            {
                "out": str(out) if not failed else None,
                "model": label,
                "files": [
                    {"source": r.source, "sha256": r.sha256, "speech_seconds": r.speech_seconds}
                    if r.error is None
                    else {"source": r.source, "error": error_object(r.error)}
                    for r in results
                ],
            }
        )
    elif not failed:
        click.echo(f"wrote {len(results)} x {dimension} voiceprints to {show(out)}")
    if failed:
        sys.exit(EXIT_ERROR)
