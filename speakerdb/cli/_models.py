"""``speakerdb models``: the built-in models and what a model file or folder is."""

from __future__ import annotations

import click

from speakerdb.cli._common import emit_json, handles_errors, json_option, show


@click.group()
def models() -> None:
    """Embedding models: built-in names, and bring-your-own model files (NeMo .nemo
    archives, SpeechBrain folders, WeSpeaker ONNX files)."""


@models.command("list")
@json_option
@handles_errors
def list_models(as_json: bool) -> None:
    """List the built-in model names (other models are named by their path)."""
    from speakerdb.model import DEFAULT_MODEL, FAMILIES, available_models

    names = list(available_models())
    if as_json:
        emit_json({"built_in": names, "default": DEFAULT_MODEL, "families": list(FAMILIES)})
        return
    for name in names:
        click.echo(f"{name}{'  (default)' if name == DEFAULT_MODEL else ''}")
    click.echo(f"bring your own: a path to a model of family {', '.join(FAMILIES)}")


@models.command("show")
@click.argument("model", metavar="NAME|PATH", required=False)
@json_option
@handles_errors
def show_model(model: str | None, as_json: bool) -> None:
    """Describe a model: family, dimension, weights sha256, sample rate, default threshold
    and where it comes from, and whether a calibration ships for it. Default: $SPEAKERDB_MODEL,
    else ge2e."""
    from speakerdb.model import describe_model

    info = describe_model(model)
    if as_json:
        emit_json(info.to_dict())
        return
    lines = [
        ("model", info.label),
        ("family", info.family),
        ("source", show(info.source) if info.source else "built in"),
        ("architecture", info.architecture or "-"),
        ("dimension", str(info.dimension)),
        ("sha256", info.weights_sha256),
        ("sample rate", f"{info.sample_rate} Hz"),
        ("threshold", f"cosine >= {info.default_threshold:.4g}"),
        ("origin", info.threshold_origin or "-"),
        (
            "calibrated",
            "yes (bundled calibration)"
            if info.calibrated
            else "no: decisions use the threshold above until `speakerdb calibrate TRIALS`",
        ),
    ]
    for key, value in lines:
        click.echo(f"{key + ':':<14}{value}")
