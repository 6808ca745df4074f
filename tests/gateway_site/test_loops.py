"""`kernel.loops.Batches`: how one event loop's records, budget holds and Redis script calls
share round trips."""

from __future__ import annotations

import asyncio

import pytest

from kernel.loops import Batches


class Wire:
    """A `send` whose batches stay on the wire until the test lets them through."""

    def __init__(self, answer=lambda key, item: (key, item)) -> None:
        self.sent: list[tuple[object, list]] = []
        self.through: dict[object, asyncio.Event] = {}
        self.answer = answer

    async def send(self, key, items: list) -> list:
        self.sent.append((key, list(items)))
        gate = self.through.setdefault(key, asyncio.Event())
        await gate.wait()
        gate.clear()
        outcome = self.answer(key, items)
        return outcome if isinstance(outcome, list) else [self.answer(key, item) for item in items]

    def let_through(self, key=None) -> None:
        self.through.setdefault(key, asyncio.Event()).set()


async def turn() -> None:
    """Let every task that can run, run (each step of a batch's round trip is one loop turn)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_call_goes_at_once_and_the_calls_that_wait_go_together_in_order():
    wire = Wire()
    batches: Batches[str] = Batches(wire.send, limit=10)
    first = batches.submit("a")
    await turn()
    assert wire.sent == [(None, ["a"])]  # at once, alone

    waiting = [batches.submit(item) for item in ("b", "c", "d")]
    await turn()
    assert wire.sent == [(None, ["a"])]  # they wait for the one on the wire
    wire.let_through()
    await turn()
    assert await first == (None, "a")
    assert wire.sent == [(None, ["a"]), (None, ["b", "c", "d"])]
    wire.let_through()
    assert [await each for each in waiting] == [(None, "b"), (None, "c"), (None, "d")]


async def test_keys_go_out_independently_and_a_batch_holds_at_most_limit():
    wire = Wire()
    batches: Batches[int] = Batches(wire.send, limit=2)
    one, two = batches.submit(1, key="x"), batches.submit(2, key="y")
    await turn()
    assert sorted(wire.sent, key=str) == [("x", [1]), ("y", [2])]  # both rows on the wire at once

    more = [batches.submit(item, key="x") for item in (3, 4, 5)]
    for _ in range(3):
        wire.let_through("x")
        await turn()
    wire.let_through("y")
    assert [await one, await two] == [("x", 1), ("y", 2)]
    assert [await each for each in more] == [("x", 3), ("x", 4), ("x", 5)]
    assert [items for key, items in wire.sent if key == "x"] == [[1], [3, 4], [5]]


async def test_an_items_own_failure_is_its_own_and_a_failed_send_is_everyones():
    def answer(key, items):
        if "boom" in items:
            raise ConnectionError("the wire broke")
        return [ValueError(item) if item == "bad" else item for item in items]

    wire = Wire(answer)
    batches: Batches[str] = Batches(wire.send, limit=10)
    batches.submit("first")
    await turn()
    good, bad = batches.submit("good"), batches.submit("bad")
    wire.let_through()
    await turn()
    wire.let_through()
    assert await good == "good"
    with pytest.raises(ValueError):
        await bad

    broken = [batches.submit(item) for item in ("ok", "boom")]
    await turn()
    wire.let_through()
    for each in broken:
        with pytest.raises(ConnectionError):
            await each


async def test_a_call_whose_caller_went_away_is_left_out():
    wire = Wire()
    batches: Batches[str] = Batches(wire.send, limit=10)
    batches.submit("on the wire")
    await turn()
    gone, kept = batches.submit("gone"), batches.submit("kept")
    gone.cancel()
    wire.let_through()
    await turn()
    wire.let_through()
    assert await kept == (None, "kept")
    assert wire.sent == [(None, ["on the wire"]), (None, ["kept"])]


async def test_a_deferred_call_waits_for_a_call_to_go_with_or_for_its_deadline():
    wire = Wire()
    wire.let_through()
    batches: Batches[str] = Batches(wire.send, limit=10, defer_seconds=30)
    deferred = batches.submit("bookkeeping", deferred=True)
    await turn()
    assert wire.sent == []  # it waits (up to 30 s) for company
    assert await batches.submit("request") == (None, "request")
    assert await deferred == (None, "bookkeeping")
    assert wire.sent == [(None, ["bookkeeping", "request"])]  # together, in the order made

    soon: Batches[str] = Batches(wire.send, limit=10, defer_seconds=0.01)
    wire.let_through()
    assert await asyncio.wait_for(soon.submit("alone", deferred=True), timeout=5) == (None, "alone")
