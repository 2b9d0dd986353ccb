"""A loopback HTTP file server for download links (``/hypernets add link:...``) in end-to-end tests.

Why not the fake Discord's attachment URLs: a link from "somewhere on the internet" is a different path in the bot
(host allow-list, address checks, streaming size cap) and should be served by something that is not Discord.
The bot under test allows ``127.0.0.1`` and private addresses, so plain ``http://`` on loopback is accepted there.
"""

from __future__ import annotations

from types import TracebackType

from aiohttp import web


class FileServer:
    """Serves ``files[path]`` at ``http://127.0.0.1:PORT/path``; records every request path in ``hits``."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.hits: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    async def _serve(self, request: web.Request) -> web.Response:
        path = request.path.lstrip("/")
        self.hits.append(path)
        data = self.files.get(path)
        if data is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=data, content_type="application/octet-stream")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FileServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
