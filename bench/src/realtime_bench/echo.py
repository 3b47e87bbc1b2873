"""The echo backend of the publish round trip: every `chat` message back to its connection.

Built on `realtime_shared.backend.Backend` exactly as a backend team would build one:
one durable queue for `chat` on the inbound exchange, and `reply` to the message's
`meta.reply_to` with the message's own `data` (which carries the client's id and send
time). Run by the orchestrator as ``python -m realtime_bench.echo``; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from faststream.rabbit import RabbitBroker

from realtime_bench.dialect import CHAT, ECHO_EVENT
from realtime_bench.runtime import run
from realtime_shared.backend import Backend, InboundMessage

ECHO_BACKEND = "bench-echo"
"""The backend's name: its queue is `<inbound exchange>.bench-echo.chat`."""

log = logging.getLogger("realtime_bench.echo")


def build(amqp_url: str, exchange: str, inbound_exchange: str) -> tuple[RabbitBroker, Backend]:
    # Message logs at DEBUG: a line per message at 500/s would be the backend's main cost.
    broker = RabbitBroker(amqp_url, logger=log, log_level=logging.DEBUG)
    backend = Backend(
        broker, name=ECHO_BACKEND, exchange=exchange, inbound_exchange=inbound_exchange
    )

    @backend.subscriber(CHAT)
    async def echo(message: InboundMessage) -> None:
        await backend.reply(message, ECHO_EVENT, message.data)

    return broker, backend


async def _main(args: argparse.Namespace) -> None:
    broker, _ = build(args.amqp_url, args.exchange, args.inbound_exchange)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m realtime_bench.echo", description=__doc__)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--inbound-exchange", required=True)
    run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
