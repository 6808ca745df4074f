"""The fake's billing ledger: what it billed, request by request (`GET /_fake/ledger`), and the
running totals (`usage` in `GET /_fake/stats`).

A provider bills the prompt once it accepts a request (its 200 goes out) and the completion as it
generates it; providers/fake/respond.py decides when, this module only keeps the books.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from providers.fake.content import Completion

LEDGER_SIZE = 100_000  # entries kept; the oldest go first
ENDINGS = ("completed", "cut", "client_left", "error")


@dataclass
class LedgerEntry:
    """One chat or embeddings request and what it was billed.

    `ended` is None while the request is in flight, then one of ENDINGS: "completed" (the whole
    answer went out), "cut" (a `disconnect_after`, `stall_after` or held `timeout` directive cut
    it), "client_left" (the client went away first: generation stopped at the next frame), "error"
    (an error status, nothing billed). Times are `time.time()` seconds.
    """

    request_id: str | None  # the `x-request-id` header it was sent
    path: str
    model: str | None
    stream: bool
    received_at: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    frames: int = 0  # content frames written (a stream's pieces of the answer)
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    client_left_at: float | None = None  # when the fake noticed the client had gone
    ended: str | None = None
    # not shown: the ledger's running totals, billed together with the entry, and what the
    # answer bills once it goes out (respond.billing_due)
    totals: dict = field(default_factory=dict, repr=False)
    due_prompt_tokens: int = field(default=0, repr=False)
    due_completion: Completion | None = field(default=None, repr=False)

    def bill(self, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.totals["prompt_tokens"] += prompt_tokens
        self.totals["completion_tokens"] += completion_tokens

    def frame_bill(self, *, completion_tokens: int, written_at: float) -> None:
        """One content frame written at `written_at`, with the tokens generated for it."""
        self.bill(completion_tokens=completion_tokens)
        self.frames += 1
        if self.first_frame_at is None:
            self.first_frame_at = written_at
        self.last_frame_at = written_at

    def as_json(self) -> dict:
        return {
            "request_id": self.request_id, "path": self.path, "model": self.model,
            "stream": self.stream, "received_at": self.received_at,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "frames": self.frames, "first_frame_at": self.first_frame_at,
            "last_frame_at": self.last_frame_at, "client_left_at": self.client_left_at,
            "ended": self.ended,
        }


def no_usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0}


class Ledger:
    """The last `size` requests' entries and the running totals since start (or reset)."""

    def __init__(self, *, size: int = LEDGER_SIZE) -> None:
        self.entries: deque[LedgerEntry] = deque(maxlen=size)
        self.usage = no_usage()

    def open(
        self, *, request_id: str | None, path: str, model: str | None, stream: bool,
        received_at: float,
    ) -> LedgerEntry:
        entry = LedgerEntry(request_id=request_id, path=path, model=model, stream=stream,
                            received_at=received_at, totals=self.usage)
        self.entries.append(entry)
        return entry

    def listing(self, *, request_id: str | None = None) -> list[dict]:
        return [entry.as_json() for entry in self.entries
                if request_id is None or entry.request_id == request_id]

    def clear(self) -> None:
        self.entries.clear()

    def reset(self) -> None:
        """Zero the totals (in place: entries in flight keep billing into them) and clear."""
        self.usage.update(no_usage())
        self.clear()
