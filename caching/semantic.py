"""The semantic cache: an earlier answer reused when its request's text is close enough.

A request's text is embedded through one of the gateway's own embedding models (the policy's
`embedding_model`, served by the embeddings pipeline like any client request, and recorded as
such). The vectors live in a bounded in-memory index per process, scoped by tenant and by
everything in the request except its messages; each points at an exact-cache entry, which holds
the answer and its expiry. So an answer cleared or expired in the exact store is gone for the
semantic cache too, in every process. (pgvector is not used: see docs/cache.md.)
"""

from __future__ import annotations

import math
import operator
import time
from collections import OrderedDict

from django.conf import settings

SEMANTIC_TASK = "cache.semantic"  # the task of the embedding calls' UsageRecords


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def cosine_of_units(a: list[float], b: list[float]) -> float:
    return math.fsum(map(operator.mul, a, b)) if len(a) == len(b) else -1.0


class SemanticIndex:
    """Unit vectors by (tenant, scope), each with the exact-cache key it stands for and an expiry.

    Bounded: past `max_entries` the oldest entry goes first.
    """

    def __init__(self, *, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, str, str], tuple[list[float], float]] = OrderedDict()
        self._scopes: dict[tuple[int, str], set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, *, tenant_id: int, scope: str, key: str, vector: list[float], ttl: int) -> None:
        entry_id = (tenant_id, scope, key)
        self._entries.pop(entry_id, None)
        self._entries[entry_id] = (unit(vector), time.time() + ttl)
        self._scopes.setdefault((tenant_id, scope), set()).add(key)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def search(self, *, tenant_id: int, scope: str, vector: list[float], threshold: float) -> tuple[str, float] | None:
        """The most similar live entry at or above `threshold`: (key, similarity), or None."""
        query, now, best = unit(vector), time.time(), None
        for key in list(self._scopes.get((tenant_id, scope), ())):
            stored, expires = self._entries[(tenant_id, scope, key)]
            if expires <= now:
                self._drop((tenant_id, scope, key))
                continue
            similarity = cosine_of_units(query, stored)
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (key, similarity)
        return best

    def discard(self, *, tenant_id: int, scope: str, key: str) -> None:
        if (tenant_id, scope, key) in self._entries:
            self._drop((tenant_id, scope, key))

    def clear(self, tenant_id: int) -> int:
        doomed = [entry_id for entry_id in self._entries if entry_id[0] == tenant_id]
        for entry_id in doomed:
            self._drop(entry_id)
        return len(doomed)

    def count(self, tenant_id: int) -> int:
        now = time.time()
        return sum(1 for (tenant, _, _), (_, expires) in self._entries.items() if tenant == tenant_id and expires > now)

    def _drop(self, entry_id: tuple[int, str, str]) -> None:
        del self._entries[entry_id]
        keys = self._scopes.get(entry_id[:2])
        if keys is not None:
            keys.discard(entry_id[2])
            if not keys:
                del self._scopes[entry_id[:2]]


_index: dict[str, SemanticIndex] = {}


def semantic_index() -> SemanticIndex:
    """The process's index (one per configured bound, so a test changing it gets a fresh one)."""
    bound = str(settings.GATEWAY_SEMANTIC_CACHE_MAX_ENTRIES)
    if bound not in _index:
        _index.clear()
        _index[bound] = SemanticIndex(max_entries=settings.GATEWAY_SEMANTIC_CACHE_MAX_ENTRIES)
    return _index[bound]
