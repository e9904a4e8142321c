"""Multipart forms parsed in memory: an uploaded recording never touches a disk on its way
in (Starlette's parser writes every file part over 1 MB to the system's temporary folder).

The guard bounds a request body (``--max-request-mb``) before anything is parsed, so a
form held in memory is bounded too; the routes then hand each recording to
:func:`speakerdb.service._uploads.received_uploads`, which writes it to a private 0600 file
(in RAM-backed /dev/shm where there is one) for the decoder and deletes it afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request as StarletteRequest

__all__ = ["InMemoryFormRoute"]


class _InMemoryMultiPartParser(MultiPartParser):
    # A file part never rolls over from memory to a temporary file.
    spool_max_size = sys.maxsize


class _InMemoryFormRequest(StarletteRequest):
    async def _get_form(
        self,
        *,
        max_files: int | float = 1000,
        max_fields: int | float = 1000,
        max_part_size: int = 1024 * 1024,
    ) -> FormData:
        content_type, _ = parse_options_header(self.headers.get("Content-Type"))
        if self._form is not None or content_type != b"multipart/form-data":
            return await super()._get_form(
                max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
            )
        try:
            async with aclosing(self.stream()) as stream:
                parser = _InMemoryMultiPartParser(
                    self.headers,
                    stream,
                    max_files=max_files,
                    max_fields=max_fields,
                    max_part_size=max_part_size,
                )
                self._form = await parser.parse()
        except MultiPartException as exc:
            raise HTTPException(status_code=400, detail=exc.message) from None
        return self._form


class InMemoryFormRoute(APIRoute):
    """A FastAPI route whose form parameters are parsed by :class:`_InMemoryFormRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def in_memory(request: Request) -> Response:
            return await handler(_InMemoryFormRequest(request.scope, request.receive))

        return in_memory
