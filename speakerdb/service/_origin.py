"""Who may talk to the server from a web browser: the Host a request names, and where a
request that changes something comes from.

Two attacks reach a server on 127.0.0.1 through the browser of someone on that machine:

- DNS rebinding: a page of ``attacker.example`` has its name re-pointed at 127.0.0.1 and
  then reads the server as if it were its own site. Its requests carry
  ``Host: attacker.example``. A server bound to a loopback address therefore answers only
  requests naming it by a loopback name or address and its own port (or a name given with
  ``--allowed-host``): 400, code ``bad_host``, otherwise.
- Cross-site requests: any page may make the browser send a multipart POST to
  ``http://127.0.0.1:8000`` (no preflight is needed for one), and without keys the server
  would act on it. Browsers say where such a request comes from (``Origin``, else
  ``Referer``; ``Sec-Fetch-Site``): a request of any method but GET, HEAD and OPTIONS from
  another origin is refused, 403, code ``cross_origin``, whatever the server's mode.
  Programs (curl, httpx, the ``--server`` client) send none of these headers.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable

from speakerdb.service._settings import ServiceSettings, is_loopback

__all__ = ["bad_host", "cross_origin"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WILDCARDS = frozenset({"0.0.0.0", "::"})


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _split(authority: str) -> tuple[str, int | None] | None:
    """(lower-case host without brackets, port or None) of ``host[:port]``; None when it
    is not one."""
    try:
        parts = urllib.parse.urlsplit("//" + authority)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.path or parts.query or parts.fragment or parts.username is not None:
        return None
    return host.lower(), port


def _is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bad_host(headers: Iterable[tuple[bytes, bytes]], settings: ServiceSettings) -> str | None:
    """Why the request's Host header is not one this server answers for, or None."""
    bound = settings.host.strip("[]").lower() if settings.host else None
    loopback = bound is not None and is_loopback(bound)
    if not loopback and not settings.allowed_hosts:
        return None  # reachable by any name; keys are required there
    value = _header(headers, b"host")
    if value is None:
        return None  # HTTP/1.0 without Host: no browser sends that
    parsed = _split(value)
    if parsed is None:
        return f"the Host header {value[:100]!r} is not a host name"
    host, port = parsed
    if host in settings.allowed_hosts:
        return None
    same_port = settings.port is None or (port if port is not None else 80) == settings.port
    if same_port and _is_loopback_name(host):
        return None
    if same_port and bound is not None and bound not in _WILDCARDS and host == bound:
        return None
    return (
        f"this server does not answer for the host {host!r} (it listens on "
        f"{settings.host}:{settings.port}; other names: speakerdb serve --allowed-host NAME)"
    )


def cross_origin(
    method: str, headers: Iterable[tuple[bytes, bytes]], settings: ServiceSettings
) -> str | None:
    """Why a request that may change something comes from another web origin, or None."""
    if method.upper() in _SAFE_METHODS:
        return None
    headers = list(headers)
    site = (_header(headers, b"sec-fetch-site") or "").lower()
    if site in ("cross-site", "same-site"):
        return f"a {site} request from a web page (Sec-Fetch-Site: {site})"
    host = (_header(headers, b"host") or "").lower()
    origin = _header(headers, b"origin")
    if origin is not None:
        if origin.lower() == "null":
            return "a request from an opaque web origin (Origin: null)"
        return _foreign(origin, host, settings, "Origin")
    referer = _header(headers, b"referer")
    if referer:
        return _foreign(referer, host, settings, "Referer")
    return None


def _foreign(url: str, host: str, settings: ServiceSettings, header: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
        authority = parts.netloc.rsplit("@", 1)[-1].lower()
        name = (parts.hostname or "").lower()
    except ValueError:
        authority, name = "", ""
    if authority and (authority == host or name in settings.allowed_hosts):
        return None
    return f"a request from another web origin ({header}: {url[:100]})"
