"""A small in-process LRU of predictions by (model identity, text).

A prediction never changes for a given model identity, so a copy held in a process is never
stale: it can only be evicted. Web processes keep one in front of the Redis cache (each
prediction as the cache holds it, JSON, ready to join into an answer), so hot texts are answered
without a round trip, which under many threads per process costs more in waiting
for the GIL after the socket I/O than in Redis itself (docs/performance.md). The worker's batcher
keeps one of the texts it computed last, so a text that arrives again before its result reached
the cache is not computed twice.
"""

import threading
from collections import OrderedDict
from collections.abc import Sequence


class HotCache:
    """Least-recently-used map of (model identity, text) -> prediction, bounded by entry count."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, model_identity: str, texts: Sequence[str]) -> list[object | None]:
        """Each text's prediction, or None where this process holds none."""
        if not self.max_entries:
            return [None] * len(texts)
        found = []
        with self._lock:
            for text in texts:
                prediction = self._entries.get((model_identity, text))
                if prediction is not None:
                    self._entries.move_to_end((model_identity, text))
                found.append(prediction)
        return found

    def store(self, model_identity: str, texts: Sequence[str], predictions: Sequence[object | None]) -> None:
        """Remember the known predictions of these texts, evicting the least recently used."""
        if not self.max_entries:
            return
        with self._lock:
            for text, prediction in zip(texts, predictions):
                if prediction is not None:
                    self._entries[(model_identity, text)] = prediction
                    self._entries.move_to_end((model_identity, text))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
