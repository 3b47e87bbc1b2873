"""Binding bookkeeping against a recording channel: counted, batched, ordered, restorable."""

import asyncio
from typing import Any

import pytest
from aiormq.abc import ChannelFrame

from realtime_edge.consumer import Bindings
from realtime_edge.metrics import EdgeMetrics

pytestmark = pytest.mark.component


class RecordingChannel:
    """Stands in for an aiormq channel: records what a broker would be asked, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    async def queue_bind(self, queue: str, exchange: str, key: str, nowait: bool = False) -> Any:
        self.calls.append(("bind", key, nowait))
        await asyncio.sleep(0)  # a real bind yields to the loop

    async def queue_unbind(self, queue: str, exchange: str, key: str) -> Any:
        self.calls.append(("unbind", key, False))
        await asyncio.sleep(0)


class Served:
    def __init__(self, bindings: Bindings) -> None:
        self.bindings = bindings
        self.channel = RecordingChannel()
        self.restored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(
            bindings.serve(self.channel, "q", "ex", self.restored)  # type: ignore[arg-type]
        )

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_many_holders_of_a_key_share_one_bind_and_the_last_release_unbinds() -> None:
    bindings = Bindings(unbind_delay=0, metrics=EdgeMetrics())
    served = Served(bindings)
    first, second = bindings.acquire("notifications.a"), bindings.acquire("notifications.a")
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    bindings.release("notifications.a")
    await settle()
    assert served.channel.calls == [("bind", "notifications.a", False)]
    bindings.release("notifications.a")
    await settle()
    assert served.channel.calls[-1] == ("unbind", "notifications.a", False)
    assert len(bindings) == 0
    await served.stop()


async def test_a_burst_is_pipelined_as_nowait_binds_closed_by_one_synchronous_bind() -> None:
    bindings = Bindings(unbind_delay=0, metrics=EdgeMetrics())
    served = Served(bindings)
    futures = [bindings.acquire(f"notifications.u{n}") for n in range(100)]
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    waits = [nowait for kind, _, nowait in served.channel.calls if kind == "bind"]
    assert len(waits) == 100
    assert waits.count(False) < 5  # round trips per batch, not per key
    assert waits[-1] is False  # the last one is the fence that confirms the batch
    await served.stop()


class BatchingChannel(RecordingChannel):
    """Also exposes aiormq's write queue, as a real channel does."""

    number = 1

    def __init__(self) -> None:
        super().__init__()
        self.write_queue: asyncio.Queue[ChannelFrame] = asyncio.Queue()


async def test_a_burst_goes_to_the_socket_as_one_buffer_then_one_fence() -> None:
    bindings = Bindings(unbind_delay=0, metrics=EdgeMetrics())
    channel = BatchingChannel()
    restored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(bindings.serve(channel, "q", "ex", restored))  # type: ignore[arg-type]
    futures = [bindings.acquire(f"notifications.u{n}") for n in range(100)]
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    buffers = [channel.write_queue.get_nowait() for _ in range(channel.write_queue.qsize())]
    assert len(buffers) == 1
    payload = buffers[0].payload
    assert all(f"notifications.u{n}".encode() in payload for n in range(99))
    assert channel.calls == [("bind", "notifications.u99", False)]  # the synchronous fence
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_reacquire_within_the_unbind_delay_keeps_the_binding() -> None:
    bindings = Bindings(unbind_delay=0.05, metrics=EdgeMetrics())
    served = Served(bindings)
    await bindings.acquire("chat")
    bindings.release("chat")
    assert bindings.acquire("chat").done()  # still bound: no wait at all
    bindings.release("chat")
    deadline = asyncio.get_running_loop().time() + 2
    while served.channel.calls[-1][0] != "unbind":
        assert asyncio.get_running_loop().time() < deadline, "the delayed unbind never came"
        await asyncio.sleep(0.01)
    assert [c[:2] for c in served.channel.calls] == [("bind", "chat"), ("unbind", "chat")]
    await served.stop()


async def test_unbind_then_rebind_of_a_key_reach_the_broker_in_that_order() -> None:
    bindings = Bindings(unbind_delay=0, metrics=EdgeMetrics())
    served = Served(bindings)
    await bindings.acquire("chat")
    bindings.release("chat")
    again = bindings.acquire("chat")
    await asyncio.wait_for(again, 1)
    assert [c[:2] for c in served.channel.calls] == [
        ("bind", "chat"),
        ("unbind", "chat"),
        ("bind", "chat"),
    ]
    await served.stop()


async def test_after_losing_the_queue_held_keys_are_bound_again_and_released_ones_forgotten() -> (
    None
):
    bindings = Bindings(unbind_delay=10, metrics=EdgeMetrics())
    served = Served(bindings)
    await asyncio.gather(bindings.acquire("a"), bindings.acquire("b"))
    bindings.release("b")  # waiting for its delayed unbind
    await served.stop()

    bindings.lost()
    pending = bindings.acquire("a")
    assert not pending.done()  # a new queue has no bindings yet
    again = Served(bindings)
    await asyncio.wait_for(again.restored, 1)
    assert pending.done()
    assert [c[:2] for c in again.channel.calls] == [("bind", "a")]
    assert len(bindings) == 1
    await again.stop()


class GatedChannel(RecordingChannel):
    """A channel whose synchronous binds wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.binding = asyncio.Event()

    async def queue_bind(self, queue: str, exchange: str, key: str, nowait: bool = False) -> Any:
        self.calls.append(("bind", key, nowait))
        self.binding.set()
        await self.gate.wait()


async def test_a_bind_in_flight_never_confirms_a_newer_holder_queued_behind_an_unbind() -> None:
    bindings = Bindings(unbind_delay=0, metrics=EdgeMetrics())
    channel = GatedChannel()
    restored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(bindings.serve(channel, "q", "ex", restored))  # type: ignore[arg-type]
    first = bindings.acquire("chat.u")
    await asyncio.wait_for(channel.binding.wait(), 1)  # the bind is on its way
    bindings.release("chat.u")  # gone before its bind returns: an unbind queues
    newer = bindings.acquire("chat.u")  # and a new holder's bind behind that unbind
    seen_when_bound: list[tuple[str, str]] = []
    newer.add_done_callback(lambda _: seen_when_bound.extend(c[:2] for c in channel.calls))
    channel.gate.set()
    await asyncio.wait_for(newer, 1)
    # When the newer holder hears "bound", the broker has seen bind, unbind, bind.
    assert seen_when_bound == [
        ("bind", "chat.u"),
        ("unbind", "chat.u"),
        ("bind", "chat.u"),
    ]
    assert first.cancelled()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
