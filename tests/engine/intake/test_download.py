"""Downloads against a real aiohttp server on 127.0.0.1: redirects, caps, time limit, address checks."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from engine.intake import IntakeRefused
from engine.intake import download as dl
from engine.intake.download import PinnedResolver, address_problem, download, host_allowed

LOCAL = ["127.0.0.1", "localhost"]


def _body(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


async def _file(request: web.Request) -> web.Response:
    return web.Response(body=_body(int(request.match_info["n"])))


async def _chain(request: web.Request) -> web.Response:
    left = int(request.match_info["k"])
    raise web.HTTPFound(f"/chain/{left - 1}" if left > 0 else "/file/3000")


async def _to_host(request: web.Request) -> web.Response:
    port = request.url.port
    raise web.HTTPFound(f"http://{request.match_info['host']}:{port}/file/10")


async def _named(request: web.Request) -> web.Response:
    return web.Response(body=b"PK\x03\x04", headers={"Content-Disposition": 'attachment; filename="waterElemental_10.pt"'})


async def _relative(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("../file/7")


async def _big_header(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.content_length = 10**9
    await resp.prepare(request)
    await resp.write(b"x" * 100)
    return resp


async def _big_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()  # chunked: no Content-Length to refuse up front
    await resp.prepare(request)
    for _ in range(64):
        await resp.write(b"\0" * 1024)
    return resp


WEB_REPLIES = {
    "/login": (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in</body></html>", "text/html"),
    "/api/download/models/9": (b'{"error":"Unauthorized","message":"The creator of this asset requires you to be '
                               b'logged in to download it"}', "application/json"),
    "/blob/main/x.pt": (b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1234\n", "text/plain"),
    "/expired": (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Request has '
                 b'expired</Message></Error>', "application/xml"),
    "/empty": (b"", "application/octet-stream"),
}


async def _web_reply(request: web.Request) -> web.Response:
    body, content_type = WEB_REPLIES[request.path]
    return web.Response(body=body, content_type=content_type)


async def _slow(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"z" * 10)
    await asyncio.sleep(30)
    return resp


@pytest_asyncio.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/file/{n}", _file)
    app.router.add_get("/chain/{k}", _chain)
    app.router.add_get("/to/{host}", _to_host)
    app.router.add_get("/sub/relative", _relative)
    app.router.add_get("/api/download/models/{id}", _named)
    app.router.add_get("/big-header", _big_header)
    app.router.add_get("/big-stream", _big_stream)
    app.router.add_get("/slow", _slow)
    for path in WEB_REPLIES:
        app.router.add_get(path, _web_reply)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def fetch(url: str, *, allowed: list[str] = LOCAL, private: bool = True, max_bytes: int = 1 << 20,
                timeout_s: float = 10, progress: object = None) -> bytes:
    return await download(url, allowed_hosts=allowed, allow_private=private, max_bytes=max_bytes, timeout_s=timeout_s,
                          progress=progress)  # type: ignore[arg-type]


async def refusal(url: str, **kw: object) -> str:
    with pytest.raises(IntakeRefused) as info:
        await fetch(url, **kw)  # type: ignore[arg-type]
    return str(info.value)


@pytest.mark.asyncio
async def test_download_with_progress(server: str) -> None:
    seen: list[tuple[int, int | None]] = []

    async def progress(done: int, total: int | None) -> None:
        seen.append((done, total))

    assert await fetch(f"{server}/file/600000", progress=progress) == _body(600_000)
    assert seen[0] == (0, 600_000) and seen[-1] == (600_000, 600_000)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.asyncio
async def test_sync_progress_callback_and_relative_redirect(server: str) -> None:
    seen: list[int] = []
    assert await fetch(f"{server}/sub/relative", progress=lambda done, total: seen.append(done)) == _body(7)
    assert seen[-1] == 7


@pytest.mark.asyncio
async def test_fetch_reports_the_server_file_name(server: str) -> None:
    named = await dl.fetch(f"{server}/api/download/models/123", allowed_hosts=LOCAL, allow_private=True, max_bytes=100,
                           timeout_s=10)
    assert (named.data, named.filename, named.url) == (b"PK\x03\x04", "waterElemental_10.pt",
                                                       f"{server}/api/download/models/123")
    plain = await dl.fetch(f"{server}/chain/0", allowed_hosts=LOCAL, allow_private=True, max_bytes=10_000,
                           timeout_s=10)
    assert (plain.filename, plain.url) == ("3000", f"{server}/file/3000")


@pytest.mark.asyncio
async def test_redirect_chain_of_five_is_followed(server: str) -> None:
    assert await fetch(f"{server}/chain/4") == _body(3000)  # 5 redirects


@pytest.mark.asyncio
async def test_redirect_chain_of_six_is_refused(server: str) -> None:
    assert await refusal(f"{server}/chain/5") == "the link redirected more than 5 times; use the direct download link"


@pytest.mark.asyncio
async def test_redirect_to_another_allowed_host_is_checked_and_followed(server: str) -> None:
    assert await fetch(f"{server}/to/localhost") == _body(10)


@pytest.mark.asyncio
async def test_redirect_to_a_disallowed_host(server: str) -> None:
    assert await refusal(f"{server}/to/evil.example") == (
        "the link redirects to `evil.example`; downloads are only allowed from 127.0.0.1, localhost (attach the file "
        "instead)")


@pytest.mark.asyncio
async def test_oversize_by_content_length(server: str) -> None:
    assert await refusal(f"{server}/big-header", max_bytes=4096) == (
        "the file is larger than the 4 KiB limit (intake.max_file_mb); check that the link points to the model file "
        "itself")


@pytest.mark.asyncio
async def test_oversize_while_streaming(server: str) -> None:
    assert await refusal(f"{server}/big-stream", max_bytes=10_000) == (
        "the file is larger than the 9.8 KiB limit (intake.max_file_mb); check that the link points to the model file "
        "itself")


@pytest.mark.asyncio
async def test_slow_server_hits_the_time_limit(server: str) -> None:
    assert await refusal(f"{server}/slow", timeout_s=0.5) == "the download took longer than 0.5 s; try again later"


@pytest.mark.asyncio
async def test_http_error_status(server: str) -> None:
    assert await refusal(f"{server}/nothing-here") == "the server answered 404 Not Found; check that the link is right"


@pytest.mark.asyncio
@pytest.mark.parametrize(("path", "message"), [
    ("/login", "the link returned a web page, not a model file; use the direct download link"),
    ("/api/download/models/9", "the link returned an error message instead of a model file (“The creator of this "
                               "asset requires you to be logged in to download it”); use the direct download link"),
    ("/expired", "the link returned an error message instead of a model file (“Request has expired”); use the direct "
                 "download link"),
    ("/blob/main/x.pt", "the link returned a Git LFS pointer, not the model itself; use the direct download link (on "
                        "Hugging Face, the one with /resolve/ in it)"),
    ("/empty", "the link returned an empty file; use the direct download link"),
])
async def test_a_web_reply_instead_of_a_file_says_what_it_was(server: str, path: str, message: str) -> None:
    assert await refusal(f"{server}{path}") == message


@pytest.mark.asyncio
async def test_loopback_refused_when_private_addresses_are_off(server: str) -> None:
    https = server.replace("http://", "https://")
    assert await refusal(f"{https}/file/10", private=False) == "`127.0.0.1` is a loopback address"


@pytest.mark.asyncio
async def test_name_resolving_to_loopback_is_refused(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    message = await refusal(f"https://localhost:{port}/file/10", private=False)
    assert message in ("`localhost` points to `127.0.0.1`, which is a loopback address",
                       "`localhost` points to `::1`, which is a loopback address")


@pytest.mark.asyncio
async def test_plain_http_needs_allow_private() -> None:
    assert await refusal("http://civitai.com/api/download/models/1", allowed=["civitai.com"], private=False) == (
        "only https:// download links are accepted")


@pytest.mark.asyncio
async def test_host_not_in_the_allow_list() -> None:
    message = await refusal("https://evil.example/x.pt", allowed=["civitai.com", "huggingface.co"], private=False)
    assert message == ("downloads are only allowed from civitai.com, huggingface.co; `evil.example` is not one of them "
                       "(attach the file instead)")


@pytest.mark.asyncio
async def test_credentials_in_the_link_are_refused() -> None:
    assert await refusal("https://user:pw@civitai.com/x", allowed=["civitai.com"], private=False) == (
        "download links with a user name or password are not accepted")


@pytest.mark.parametrize(("address", "problem"), [
    ("10.0.0.5", "a private address"),
    ("192.168.1.1", "a private address"),
    ("127.0.0.1", "a loopback address"),
    ("::1", "a loopback address"),
    ("169.254.169.254", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("224.0.0.1", "a multicast address"),
    ("0.0.0.0", "an unspecified address"),
    ("::ffff:10.0.0.5", "a private address"),
    ("100.64.0.1", "not a public address"),
    ("240.0.0.1", "a reserved address"),
    ("8.8.8.8", None),
    ("2606:4700::1111", None),
    ("2002:a00:1::1", "a private address in 6to4 form (10.0.0.1)"),  # 6to4 of 10.0.0.1
    ("2002:808:808::1", None),  # 6to4 of 8.8.8.8
    ("64:ff9b::10.0.0.1", "a private address in NAT64 form (10.0.0.1)"),
    ("64:ff9b::8.8.8.8", None),
    ("64:ff9b:1::a00:1", "a local-use NAT64 address"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "a private address in Teredo form (10.0.0.1)"),  # client 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "a Teredo tunnel address"),  # client 8.8.8.8: public, still a tunnel
])
def test_address_classes(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize(("host", "ok"), [
    ("civitai.com", True), ("CDN.Civitai.com", True), ("civitai.com.", True), ("image.cdn.civitai.com", True),
    ("evilcivitai.com", False), ("civitai.com.evil.example", False), ("huggingface.co", False),
])
def test_host_allow_list_takes_subdomains(host: str, ok: bool) -> None:
    assert host_allowed(host, ["civitai.com"]) is ok


@pytest.mark.asyncio
async def test_pinned_resolver_answers_only_with_the_checked_address() -> None:
    resolver = PinnedResolver("cdn.civitai.com", "203.0.113.7", 2)
    (answer,) = await resolver.resolve("cdn.civitai.com", 443)
    assert (answer["host"], answer["port"]) == ("203.0.113.7", 443)
    with pytest.raises(OSError):
        await resolver.resolve("other.example", 443)
