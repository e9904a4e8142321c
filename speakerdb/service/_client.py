"""A small client of ``speakerdb serve``, for scripts that used the CLI locally
(``speakerdb verify NAME FILE --server URL``) and for Python callers.

    client = ServiceClient("http://voice.internal:8000", key)   # key: $SPEAKERDB_API_KEY
    client.verify("alice", ["call.wav"])    # [{"decision": "ACCEPT", "score": ..., ...}]

Answers are the server's JSON documents; an error answer raises the library error of its
code (SpeakerNotFoundError, AudioDecodeError, ...) or, for the HTTP layer's own refusals
(authentication, limits), a ServiceRefused with the code and message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from speakerdb import errors
from speakerdb.errors import SpeakerDBError

__all__ = ["KEY_ENV", "ServiceClient", "ServiceRefused"]

KEY_ENV = "SPEAKERDB_API_KEY"


class ServiceRefused(SpeakerDBError):
    """The server refused the request for a reason of its own (unauthorized, forbidden,
    too_large, timeout, busy ...): ``status`` is the HTTP status, ``remote_code`` its code."""

    code = "service"

    def __init__(self, status: int, remote_code: str, message: str) -> None:
        self.status = status
        self.remote_code = remote_code
        super().__init__(f"{message} (HTTP {status}, {remote_code})")


def _library_errors() -> dict[str, type[SpeakerDBError]]:
    found: dict[str, type[SpeakerDBError]] = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, SpeakerDBError):
            found.setdefault(value.code, value)
    return found


class ServiceClient:
    """Talks to one server. ``key``: an API key (None: ``$SPEAKERDB_API_KEY``, or none)."""

    def __init__(self, url: str, key: str | None = None, timeout_s: float = 300.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        key = key if key is not None else os.environ.get(KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify(
        self,
        name: str,
        files: Sequence[str | os.PathLike[str]],
        threshold: float | None = None,
        norm: str = "none",
        prior: float | None = None,
        far: float | None = None,
    ) -> list[dict[str, Any]]:
        """One answer per file, in order (see the server's verify route)."""
        from urllib.parse import quote

        data = {"norm": norm} | _decision_fields(threshold, prior, far)
        return self._per_file(
            f"/v1/speakers/{quote(name, safe='')}/verify", files, data | {"_name": name}
        )

    def identify(
        self,
        files: Sequence[str | os.PathLike[str]],
        top_k: int = 5,
        threshold: float | None = None,
        norm: str = "none",
        prior: float | None = None,
        far: float | None = None,
    ) -> list[dict[str, Any]]:
        data = {"top_k": str(top_k), "norm": norm} | _decision_fields(threshold, prior, far)
        return self._per_file("/v1/identify", files, data)

    def _per_file(
        self, path: str, files: Sequence[str | os.PathLike[str]], data: dict[str, str]
    ) -> list[dict[str, Any]]:
        import httpx

        uploads = []
        for f in files:
            p = Path(f)
            try:
                uploads.append(("audio", (p.name, p.read_bytes())))
            except FileNotFoundError:
                raise errors.AudioNotFoundError(str(f), "no such file") from None
            except OSError as exc:
                raise errors.AudioDecodeError(str(f), f"cannot read ({exc.strerror})") from None
        fields = {k: v for k, v in data.items() if not k.startswith("_")}
        try:
            response = self._http.post(path, files=uploads, data=fields)
        except httpx.HTTPError as exc:
            raise errors.ConfigurationError(f"cannot reach {self.url}: {exc}") from None
        try:
            document = response.json()
        except ValueError:
            raise ServiceRefused(response.status_code, "not_json", response.text[:200]) from None
        if response.status_code >= 400:
            body = document.get("error", {}) if isinstance(document, dict) else {}
            raise self._error(response.status_code, body, data.get("_name"))
        return document if isinstance(document, list) else [document]

    @staticmethod
    def _error(status: int, body: dict[str, Any], name: str | None) -> SpeakerDBError:
        code = str(body.get("code", "error"))
        message = str(body.get("message", "error"))
        known = _library_errors().get(code)
        if known is errors.SpeakerNotFoundError and name is not None:
            return errors.SpeakerNotFoundError(name)
        if known is not None and issubclass(known, errors.AudioError):
            source = str(body.get("source", ""))
            return known(source, message.removeprefix(f"{source}: "))
        if known is not None and known not in (SpeakerDBError, errors.SpeakerNotFoundError):
            return known(message)
        return ServiceRefused(status, code, message)


def _decision_fields(
    threshold: float | None, prior: float | None, far: float | None
) -> dict[str, str]:
    """The form fields that choose the operating point, as the server's routes name them."""
    given = {"threshold": threshold, "prior": prior, "far": far}
    return {key: repr(value) for key, value in given.items() if value is not None}
