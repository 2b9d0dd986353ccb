"""Download a model file from an allowed host, refusing everything an attacker could point us at.

Why so strict: an admin pastes a link, but the bot fetches it from inside the server's network.  Without
checks a link (or a redirect) could reach internal services (``http://10.0.0.5/``, cloud metadata at
``169.254.169.254``), or stream forever.  So, for the first URL and for every redirect hop (followed here, at
most :data:`MAX_REDIRECTS`):

* ``https://`` only; plain ``http://`` only when ``allow_private`` is on (a test or LAN setup), no user:pass@;
* the host must be an allowed host or a subdomain of one (``cdn.civitai.com`` for ``civitai.com``).  Civitai's
  ``/api/download/models/<id>`` redirects to a CDN host: that host must be allowed too, by being a subdomain
  of a listed host or by being listed itself;
* the name is resolved here and every address must be public (not private, loopback, link-local, multicast,
  reserved, unspecified) unless ``allow_private``; the connection then goes to that checked address (a pinned
  resolver), so a DNS answer that changes between check and connect (DNS rebinding) cannot redirect it.  TLS
  still verifies the certificate against the host name;
* the size cap applies to ``Content-Length`` and again while streaming; the whole download has one deadline;
* a reply that is a web page, a JSON or XML error message, a Git LFS pointer or other text (a login page, an
  expired link) is refused from its first 4 KiB with what it was (:func:`engine.intake.identify.identify_head`).

Every refusal is an :class:`engine.intake.base.IntakeRefused` with a one-line reason.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from engine.intake.base import IntakeRefused, human_size, quote_text
from engine.intake.identify import HEAD_BYTES, identify_head, link_refusal
from engine.intake.ingest import display_name
from engine.intake.kinds import FileIdentity, FileKind

MAX_REDIRECTS = 5
CHUNK = 256 * 1024
Progress = Callable[[int, int | None], Awaitable[None] | None]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def _plain_problem(ip: IPAddress) -> str | None:
    checks = (("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
              ("is_multicast", "a multicast address"), ("is_unspecified", "an unspecified address"),
              ("is_reserved", "a reserved address"), ("is_private", "a private address"))
    for attr, what in checks:
        if getattr(ip, attr):
            return what
    return None if ip.is_global else "not a public address"


def _wrapped(ip: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The IPv4 addresses an IPv6 address carries and the form it uses: 6to4, Teredo (server and client), NAT64."""
    if ip.sixtofour is not None:
        return "6to4", [ip.sixtofour]
    if ip.teredo is not None:
        return "Teredo", list(ip.teredo)
    if ip in _NAT64:
        return "NAT64", [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public internet address ("a private address", ...), or None when it is.

    IPv6 forms that carry an IPv4 address are judged by what they carry: IPv4-mapped (``::ffff:10.0.0.5`` is
    private), 6to4 (``2002::/16``), Teredo (``2001::/32``, both addresses) and NAT64 (``64:ff9b::/96``; the
    local-use ``64:ff9b:1::/48`` is never public).  A 6to4 or NAT64 form of a public address is public.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _plain_problem(ip.ipv4_mapped)
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        wrapped = _wrapped(ip)
        if wrapped is not None:
            form, inner = wrapped
            for v4 in inner:
                what = _plain_problem(v4)
                if what is not None:
                    return f"{what} in {form} form ({v4})"
            return "a Teredo tunnel address" if form == "Teredo" else None
    return _plain_problem(ip)


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """``host`` equals an allowed host or is a subdomain of one (IP literals only match exactly)."""
    host = host.lower().rstrip(".")
    for entry in allowed_hosts:
        entry = entry.lower().strip().strip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


class PinnedResolver(AbstractResolver):
    """Answers only for the one host it was made for, with the one address that passed the checks."""

    def __init__(self, host: str, address: str, family: int) -> None:
        self._host, self._address, self._family = host, address, family

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        if host.lower().rstrip(".") != self._host:
            raise OSError(f"unexpected host {host!r}: only {self._host!r} was checked")
        return [ResolveResult(hostname=host, host=self._address, port=port, family=self._family, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


def _check_url(url: URL, allowed_hosts: Sequence[str], allow_private: bool, redirected: bool) -> str:
    """Scheme, credentials and host allow-list; returns the ASCII host name."""
    schemes = ("https", "http") if allow_private else ("https",)
    if url.scheme not in schemes:
        raise IntakeRefused("only https:// download links are accepted" if not allow_private
                            else "only http:// and https:// download links are accepted")
    if url.user is not None or url.password is not None:
        raise IntakeRefused("download links with a user name or password are not accepted")
    host = (url.raw_host or "").lower().rstrip(".")
    if not host:
        raise IntakeRefused("the download link has no host name")
    if not host_allowed(host, allowed_hosts):
        hosts = ", ".join(allowed_hosts) or "(none configured)"
        if redirected:
            raise IntakeRefused(f"the link redirects to `{quote_text(host)}`; downloads are only allowed from {hosts} "
                                "(attach the file instead)")
        raise IntakeRefused(f"downloads are only allowed from {hosts}; `{quote_text(host)}` is not one of them (attach the "
                            "file instead)")
    return host


async def resolve_checked(host: str, port: int, allow_private: bool) -> tuple[str, int]:
    """Resolve ``host`` and check every address; return the one to connect to and its family."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise IntakeRefused(f"the host `{quote_text(host)}` could not be found") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))
        if not addresses:
            raise IntakeRefused(f"the host `{quote_text(host)}` could not be found")
    if not allow_private:
        for ip in addresses:
            what = address_problem(ip)
            if what is not None:
                if literal is not None:
                    raise IntakeRefused(f"`{ip}` is {what}")
                raise IntakeRefused(f"`{quote_text(host)}` points to `{ip}`, which is {what}")
    first = addresses[0]
    return str(first), socket.AF_INET6 if first.version == 6 else socket.AF_INET


_STATUS_HINTS = {401: "; the file needs a login, use a link that works without one",
                 403: "; the file needs a login or is not public, use a link that works without one",
                 404: "; check that the link is right", 410: "; check that the link is right",
                 500: "; try again later"}


def _refuse_web_reply(head: bytes, size: int) -> None:
    """A link that returned a web page, an error message or text instead of a file: refused with what it was."""
    identity = identify_head(head, size) if head else FileIdentity(FileKind.EMPTY, 0)
    if identity is not None:
        raise IntakeRefused(link_refusal(identity) or "", identity)


async def _report(progress: Progress | None, done: int, total: int | None) -> None:
    if progress is not None:
        result = progress(done, total)
        if inspect.isawaitable(result):
            await result


@dataclass(frozen=True)
class Downloaded:
    """A finished download: the body, the file name the server gave (Content-Disposition, else the last path
    part of the final URL; for display and the suggested model name only, never a path), and the final URL."""

    data: bytes
    filename: str
    url: str


def _server_filename(resp: aiohttp.ClientResponse, url: URL) -> str:
    disposition = resp.content_disposition
    name = disposition.filename if disposition is not None and disposition.filename else url.name
    return display_name(name or "download")


async def _fetch(url: str, sink: Callable[[bytes], Any], *, allowed_hosts: Sequence[str], allow_private: bool,
                 max_bytes: int, progress: Progress | None) -> tuple[str, URL]:
    current = URL(url)
    for hop in range(MAX_REDIRECTS + 1):
        host = _check_url(current, allowed_hosts, allow_private, redirected=hop > 0)
        port = current.explicit_port or (443 if current.scheme == "https" else 80)
        address, family = await resolve_checked(host, port, allow_private)
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(host, address, family), use_dns_cache=False,
                                         force_close=True)
        headers = {"Accept-Encoding": "identity", "User-Agent": "Hypercord model intake"}
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False) as session, \
                session.get(current, allow_redirects=False, headers=headers) as resp:
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                if not location:
                    raise IntakeRefused(f"the server answered a redirect ({resp.status}) without a target")
                current = current.join(URL(location))
                continue
            if resp.status != 200:
                raise IntakeRefused(f"the server answered {resp.status} {quote_text(resp.reason or '', 40)}".rstrip()
                                    + _STATUS_HINTS.get(resp.status // 100 * 100 if resp.status >= 500 else resp.status,
                                                        ""))
            total = resp.content_length
            if total is not None and total > max_bytes:
                raise IntakeRefused(f"the file is larger than the {human_size(max_bytes)} limit "
                                    "(intake.max_file_mb); check that the link points to the model file itself")
            done = 0
            head = bytearray()
            await _report(progress, 0, total)
            async for chunk in resp.content.iter_chunked(CHUNK):
                done += len(chunk)
                if done > max_bytes:
                    raise IntakeRefused(f"the file is larger than the {human_size(max_bytes)} limit "
                                        "(intake.max_file_mb); check that the link points to the model file itself")
                if len(head) < HEAD_BYTES:
                    head += chunk[: HEAD_BYTES - len(head)]
                    if len(head) == HEAD_BYTES:
                        _refuse_web_reply(bytes(head), total or done)
                sink(chunk)
                await _report(progress, done, total)
            if total is not None and done != total:
                raise IntakeRefused("the download ended early (the server sent less than it announced); try again")
            if len(head) < HEAD_BYTES:
                _refuse_web_reply(bytes(head), done)
            return _server_filename(resp, current), current
    raise IntakeRefused(f"the link redirected more than {MAX_REDIRECTS} times; use the direct download link")


async def download(url: str, *, allowed_hosts: Sequence[str], allow_private: bool, max_bytes: int, timeout_s: float,
                   progress: Progress | None = None) -> bytes:
    """Fetch ``url`` under the rules in the module docstring; return the body (see :func:`fetch` for more)."""
    result = await fetch(url, allowed_hosts=allowed_hosts, allow_private=allow_private, max_bytes=max_bytes,
                         timeout_s=timeout_s, progress=progress)
    return result.data


async def fetch(url: str, *, allowed_hosts: Sequence[str], allow_private: bool, max_bytes: int, timeout_s: float,
                progress: Progress | None = None) -> Downloaded:
    """Like :func:`download`, also returning the server's file name (civitai sends the real one) and final URL.

    ``progress(received_bytes, total_or_None)`` is called (and awaited if it returns an awaitable) once at the
    start and after every 256 KiB chunk; throttle UI updates on the caller's side.
    """
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            filename, final = await _fetch(url, body.extend, allowed_hosts=allowed_hosts, allow_private=allow_private,
                                           max_bytes=max_bytes, progress=progress)
    except TimeoutError:
        raise IntakeRefused(f"the download took longer than {timeout_s:g} s; try again later") from None
    except aiohttp.ClientConnectorCertificateError:
        raise IntakeRefused("the server's TLS certificate could not be verified") from None
    except aiohttp.ClientConnectorError as e:
        raise IntakeRefused(f"could not connect to `{quote_text(e.host)}`; try again later") from None
    except aiohttp.ClientPayloadError:
        raise IntakeRefused("the download was cut off or garbled by the server; try again") from None
    except (aiohttp.ClientError, ValueError) as e:
        raise IntakeRefused(f"the download failed ({type(e).__name__})") from None
    return Downloaded(bytes(body), filename, str(final))
