"""``verify`` and ``identify`` with ``--server URL``: the same command, answered by a
running ``speakerdb serve`` (key in ``$SPEAKERDB_API_KEY``), so scripts need not change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from speakerdb.cli._common import EXIT_ERROR, EXIT_NO, EXIT_OK, emit_json, show
from speakerdb.decisions import DecisionOptions
from speakerdb.errors import MissingDependencyError


def _client(server: str) -> Any:
    try:
        from speakerdb.service import ServiceClient
    except ImportError as exc:
        raise MissingDependencyError(
            f"--server needs the serve extra: pip install 'speakerdb[serve]' ({exc})"
        ) from None
    return ServiceClient(server)


def _report(
    documents: Sequence[dict[str, Any]],
    as_json: bool,
    render: Callable[[dict[str, Any]], str],
    ok: Callable[[dict[str, Any]], bool],
) -> int:
    """Print the server's answers like the local command prints its results; exit status."""
    status = EXIT_OK
    for document in documents:
        if "error" in document:
            status = EXIT_ERROR
            if not as_json:
                click.echo(f"error: {document['error'].get('message', 'error')}", err=True)
            continue
        if not as_json:
            click.echo(render(document))
        if not ok(document) and status == EXIT_OK:
            status = EXIT_NO
    if as_json:
        emit_json(documents[0] if len(documents) == 1 else list(documents))
    return status


def remote_verify(
    server: str,
    name: str,
    files: Sequence[Path],
    options: DecisionOptions,
    as_json: bool,
) -> int:
    with _client(server) as client:
        documents = client.verify(name, list(files), options=options)

    def render(d: dict[str, Any]) -> str:
        return (
            f"{'ACCEPTED' if d['accepted'] else 'REJECTED'}  {show(d['speaker'])}  "
            f"{show(d['source'])}  score {d['score']:.4f}  threshold {d['threshold']:.4f}"
        )

    return _report(documents, as_json, render, lambda d: bool(d["accepted"]))


def remote_identify(
    server: str,
    files: Sequence[Path],
    top_k: int,
    options: DecisionOptions,
    as_json: bool,
) -> int:
    with _client(server) as client:
        documents = client.identify(list(files), top_k, options=options)

    def render(d: dict[str, Any]) -> str:
        head = show(d["best"]) if d["best"] else "UNKNOWN"
        listing = (
            ", ".join(f"{show(m['name'])} {m['score']:.4f}" for m in d["matches"])
            or "no speakers enrolled"
        )
        return f"{head}  {show(d['source'])}  threshold {d['threshold']:.4f}  [{listing}]"

    return _report(documents, as_json, render, lambda d: d["best"] is not None)
