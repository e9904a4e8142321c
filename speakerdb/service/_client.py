"""A small client of ``speakerdb serve``, for scripts that used the CLI locally
(``speakerdb verify NAME FILE --server URL``) and for Python callers.

    client = ServiceClient("http://voice.internal:8000", key)   # key: $SPEAKERDB_API_KEY
    client.verify("alice", ["call.wav"])    # [{"decision": "ACCEPT", "score": ..., ...}]

Answers are the server's JSON documents; an error answer raises the library error of its
code (SpeakerNotFoundError, AudioDecodeError, ...) or, for the HTTP layer's own refusals
(authentication, limits), a ServiceRefused with the code and message.

Whatever answers at the URL is not trusted: an answer is read as it streams in and
refused past :data:`MAX_ANSWER_BYTES` (a real one is a few kB per recording), and a 200
answer must have the shape the route documents (one object per recording sent, with the
fields the CLI prints); anything else raises ServiceAnswerError, never a KeyError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from speakerdb import errors
from speakerdb.decisions import DecisionOptions
from speakerdb.errors import SpeakerDBError, UsageError

__all__ = ["KEY_ENV", "MAX_ANSWER_BYTES", "ServiceAnswerError", "ServiceClient", "ServiceRefused"]

KEY_ENV = "SPEAKERDB_API_KEY"
MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""The largest answer read (an identification of 20 recordings with 1000 candidates each
is about 2 MB)."""


class ServiceRefused(SpeakerDBError):
    """The server refused the request for a reason of its own (unauthorized, forbidden,
    too_large, timeout, busy ...): ``status`` is the HTTP status, ``remote_code`` its code."""

    code = "service"

    def __init__(self, status: int, remote_code: str, message: str) -> None:
        self.status = status
        self.remote_code = remote_code
        super().__init__(f"{message} (HTTP {status}, {remote_code})")


class ServiceAnswerError(SpeakerDBError):
    """What answered at the URL is not what ``speakerdb serve`` sends (too large, not
    JSON of the documented shape): ``status`` is the HTTP status."""

    code = "bad_answer"

    def __init__(self, url: str, status: int, why: str) -> None:
        self.status = status
        super().__init__(f"{url} did not answer like speakerdb serve (HTTP {status}): {why}")


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
        *,
        options: DecisionOptions | None = None,
    ) -> list[dict[str, Any]]:
        """One answer per file, in order (see the server's verify route). threshold / norm
        / prior / far, or all of them as ``options``."""
        from urllib.parse import quote

        data = _decision_fields(options, threshold, norm, prior, far)
        return self._per_file(
            f"/v1/speakers/{quote(name, safe='')}/verify",
            files,
            data | {"_name": name},
            _VERIFICATION,
        )

    def identify(
        self,
        files: Sequence[str | os.PathLike[str]],
        top_k: int = 5,
        threshold: float | None = None,
        norm: str = "none",
        prior: float | None = None,
        far: float | None = None,
        *,
        options: DecisionOptions | None = None,
    ) -> list[dict[str, Any]]:
        data = {"top_k": str(top_k)} | _decision_fields(options, threshold, norm, prior, far)
        return self._per_file("/v1/identify", files, data, _IDENTIFICATION)

    def _per_file(
        self,
        path: str,
        files: Sequence[str | os.PathLike[str]],
        data: dict[str, str],
        shape: dict[str, tuple[type, ...]],
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
            with self._http.stream("POST", path, files=uploads, data=fields) as response:
                status = response.status_code
                content = self._bounded(response)
        except httpx.HTTPError as exc:
            raise errors.ConfigurationError(f"cannot reach {self.url}: {exc}") from None
        try:
            document = json.loads(content)
        except ValueError:
            if status >= 400:
                shown = content[:200].decode("utf-8", "replace")
                raise ServiceRefused(status, "not_json", shown or "(no answer)") from None
            raise ServiceAnswerError(self.url, status, "the answer is not JSON") from None
        if status >= 400:
            body = document.get("error") if isinstance(document, dict) else None
            raise self._error(status, body if isinstance(body, dict) else {}, data.get("_name"))
        if status != 200:
            raise ServiceAnswerError(self.url, status, "a lookup is answered with status 200")
        return _checked(document, len(uploads), shape, self.url)

    def _bounded(self, response: Any) -> bytes:
        """The answer's body, read as it comes; ServiceAnswerError past MAX_ANSWER_BYTES
        (declared or received), without reading the rest."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            raise ServiceAnswerError(
                self.url,
                response.status_code,
                f"its answer of {int(declared)} bytes is larger than any of its answers "
                f"({MAX_ANSWER_BYTES} bytes at most)",
            )
        received = bytearray()
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > MAX_ANSWER_BYTES:
                raise ServiceAnswerError(
                    self.url,
                    response.status_code,
                    f"its answer is larger than any of its answers ({MAX_ANSWER_BYTES} "
                    "bytes at most)",
                )
        return bytes(received)

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


_NUMBER = (int, float)
_VERIFICATION: dict[str, tuple[type, ...]] = {
    "accepted": (bool,),
    "speaker": (str,),
    "source": (str,),
    "score": _NUMBER,
    "threshold": _NUMBER,
}
_IDENTIFICATION: dict[str, tuple[type, ...]] = {
    "best": (str, type(None)),
    "matches": (list,),
    "source": (str,),
    "threshold": _NUMBER,
}
_MATCH: dict[str, tuple[type, ...]] = {"name": (str,), "score": _NUMBER}
_ERROR: dict[str, tuple[type, ...]] = {"code": (str,), "message": (str,)}


def _checked(
    document: Any, count: int, shape: dict[str, tuple[type, ...]], url: str
) -> list[dict[str, Any]]:
    """The answer's documents, one per recording sent, each an error or of ``shape``;
    ServiceAnswerError otherwise."""
    documents = document if isinstance(document, list) else [document]
    if len(documents) != count:
        why = f"{len(documents)} result(s) for {count} recording(s)"
        raise ServiceAnswerError(url, 200, why)
    for number, item in enumerate(documents, start=1):
        where = f"result {number}"
        if not isinstance(item, dict):
            raise ServiceAnswerError(url, 200, f"{where} is not a JSON object")
        if "error" in item:
            _require(item["error"], _ERROR, f"{where}'s error", url)
            continue
        _require(item, shape, where, url)
        for match in item.get("matches", ()):
            _require(match, _MATCH, f"a candidate of {where}", url)
    return documents


def _require(item: Any, shape: dict[str, tuple[type, ...]], where: str, url: str) -> None:
    if not isinstance(item, dict):
        raise ServiceAnswerError(url, 200, f"{where} is not a JSON object")
    for field, kinds in shape.items():
        if field not in item:
            raise ServiceAnswerError(url, 200, f"{where} has no {field!r}")
        value = item[field]
        # bool is an int to Python, not a number to JSON
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ServiceAnswerError(url, 200, f"{where}'s {field!r} is not what it should be")


def _decision_fields(
    options: DecisionOptions | None,
    threshold: float | None,
    norm: str,
    prior: float | None,
    far: float | None,
) -> dict[str, str]:
    """The form fields of the decision options, as the server's routes name them (the
    options given, else those of the loose arguments)."""
    if options is None:
        options = DecisionOptions.of(threshold, prior=prior, far=far, norm=norm)
    elif (threshold, prior, far) != (None, None, None) or norm != "none":
        raise UsageError("give the decision options as DecisionOptions or as keywords, not both")
    if options.cohort is not None:
        raise UsageError("a cohort names local files: the server uses its enrolled speakers")
    given = {"threshold": options.threshold, "prior": options.prior, "far": options.far}
    fields = {"norm": "none" if options.normalization is None else options.normalization}
    return fields | {key: repr(value) for key, value in given.items() if value is not None}
