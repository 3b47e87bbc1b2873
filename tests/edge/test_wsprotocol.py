"""The light containers behind each connection's uvicorn protocol keep uvicorn's behaviour."""

import asyncio
import logging

import pytest

from realtime_edge.wsprotocol import Flag, Inbox, QuietAccepts

pytestmark = pytest.mark.unit


async def test_inbox_hands_messages_over_in_order_and_wakes_a_waiting_reader() -> None:
    inbox = Inbox()
    inbox.put_nowait({"n": 1})

    async def read_three() -> list[object]:
        return [await inbox.get() for _ in range(3)]  # one reader, as the ASGI app is

    reader = asyncio.ensure_future(read_three())
    await asyncio.sleep(0)  # the reader takes the first message, then waits
    assert not reader.done()
    inbox.put_nowait({"n": 2})
    inbox.put_nowait({"n": 3})
    assert await asyncio.wait_for(reader, 1) == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert inbox.empty()


async def test_a_cancelled_inbox_reader_leaves_the_message_for_the_next() -> None:
    inbox = Inbox()
    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait("kept")
    assert await asyncio.wait_for(inbox.get(), 1) == "kept"


async def test_flag_blocks_writers_while_clear_and_releases_them_when_set() -> None:
    flag = Flag(True)
    assert await flag.wait()  # set: no suspension
    flag.clear()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True]
    assert flag.is_set()


def test_accepted_lines_are_dropped_and_refusals_kept() -> None:
    quiet = QuietAccepts()

    def record(msg: str) -> logging.LogRecord:
        args = ("127.0.0.1:5000", "/ws?token=[redacted]")
        return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)

    refused = record('%s - "WebSocket %s" 403')
    assert quiet.filter(refused) and refused.levelno == logging.INFO
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert not quiet.filter(record('%s - "WebSocket %s" [accepted]'))
        logger.setLevel(logging.DEBUG)
        accepted = record('%s - "WebSocket %s" [accepted]')
        assert quiet.filter(accepted) and accepted.levelname == "DEBUG"
    finally:
        logger.setLevel(level)
