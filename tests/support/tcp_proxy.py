"""A TCP proxy a test can cut and restore, to take a service away from one client only.

RabbitMQ and PostgreSQL are shared by every test and helper on the machine, so
an outage is simulated on the client's own link: point the client at the
proxy, `cut()` (open connections are reset, new ones are refused), then
`restore()`. `strand()` resets only the client's side of the open connections: the
server keeps its end, silent, as after a NAT or load balancer dropped its state, until
it times the connection out itself (or the proxy closes). `retarget()` sends new
connections to another server, as a load balancer does when a node dies.

    async with TcpProxy("127.0.0.1", 5672) as proxy:
        url = proxy.rewrite("amqp://guest:guest@127.0.0.1:5672/")
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

CHUNK = 65_536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: dict[
            asyncio.StreamWriter, tuple[asyncio.StreamWriter, list[asyncio.Task[None]]]
        ] = {}
        self._stranded: list[asyncio.StreamWriter] = []

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        parts = urlsplit(url)
        assert parts.hostname and parts.port, url
        return cls(parts.hostname, parts.port)

    def rewrite(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self._reset_all()
        for writer in self._stranded:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until `restore()`."""
        self._cut = True
        self._reset_all()

    def restore(self) -> None:
        self._cut = False

    def retarget(self, host: str, port: int) -> None:
        """Send new connections to another server (a load balancer moving on from a dead
        node); open ones stay where they are."""
        self.target_host, self.target_port = host, port

    def strand(self) -> None:
        """Reset the client's side of every open connection; the server's side stays open."""
        for client_w, (upstream_w, pumps) in list(self._links.items()):
            self._stranded.append(upstream_w)  # kept open and never read again
            self._writers.difference_update((client_w, upstream_w))
            for pump in pumps:
                pump.cancel()
            client_w.transport.abort()
        self._links.clear()

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # RST now, like a dead network, not a polite FIN
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._cut:
            client_w.transport.abort()
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, upstream_w))
        pumps = [
            asyncio.create_task(self._pump(client_r, upstream_w)),
            asyncio.create_task(self._pump(upstream_r, client_w)),
        ]
        self._tasks.update(pumps)
        self._links[client_w] = (upstream_w, pumps)
        for pump in pumps:
            pump.add_done_callback(self._tasks.discard)
        await asyncio.gather(*pumps, return_exceptions=True)
        if upstream_w in self._stranded:
            return
        self._links.pop(client_w, None)
        for writer in (client_w, upstream_w):
            self._writers.discard(writer)
            writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
