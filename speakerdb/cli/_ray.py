"""The ``--ray`` options of the batch commands (enroll --manifest, embed, db reembed,
diarize --manifest)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from speakerdb.enroll import RayOptions

F = TypeVar("F", bound=Callable[..., Any])


def ray_options(what: str, files_per_task: int = 16) -> Callable[[F], F]:
    """``--ray ADDRESS``, ``--ray-workers N`` and ``--ray-files-per-task N``; ``what``: the
    work the cluster does, for the help text; files_per_task: the default batch."""

    def decorate(command: F) -> F:
        command = click.option(
            "--ray-files-per-task",
            type=click.IntRange(min=1),
            default=files_per_task,
            show_default=True,
            metavar="N",
            help="With --ray: files per batch handed to an actor.",
        )(command)
        command = click.option(
            "--ray-workers",
            type=click.IntRange(min=1),
            metavar="N",
            help="With --ray: actors in the pool (default: one per GPU of the cluster, "
            "else one per CPU).",
        )(command)
        return click.option(
            "--ray",
            "ray_address",
            metavar="ADDRESS",
            help=f"{what} on a Ray cluster (local, auto, ray://HOST:PORT or HOST:PORT; extra "
            "speakerdb[ray]); the files must be readable at the same paths on every node.",
        )(command)

    return decorate


def ray_choice(address: str | None, workers: int | None, files_per_task: int) -> RayOptions | None:
    """The options given, or None without --ray."""
    from speakerdb.enroll import RayOptions

    return None if address is None else RayOptions(address, workers, files_per_task)
