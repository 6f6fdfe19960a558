"""Per-request state as numpy columns, and the small array helpers the engine's modules share."""

from __future__ import annotations

import numpy as np

EMPTY = np.zeros(0, dtype=np.int64)
_ONES = np.ones(1 << 14, dtype=np.int64)      # one token per request, sliced (read-only)
_ONES.flags.writeable = False
total = np.add.reduce                          # sum without np.sum's dispatch overhead (per-step hot path)


def ones(n: int) -> np.ndarray:
    return _ONES[:n] if n <= len(_ONES) else np.ones(n, dtype=np.int64)


class _Columns:
    """Rows appended per step to a few growing numpy columns (amortised doubling): joining
    thousands of small per-step arrays at the end cost more than the appends."""

    def __init__(self, dtypes):
        self.cols = [np.empty(1024, dtype=d) for d in dtypes]
        self.size = 0

    def append(self, *arrays) -> None:
        n = len(arrays[0])
        end = self.size + n
        if end > len(self.cols[0]):
            cap = max(2 * len(self.cols[0]), end)
            self.cols = [np.concatenate([c[:self.size], np.empty(cap - self.size, dtype=c.dtype)]) for c in self.cols]
        for c, a in zip(self.cols, arrays):
            c[self.size:end] = a
        self.size = end

    def arrays(self) -> list:
        return [c[:self.size] for c in self.cols]


class Requests:
    """Per-request state as columns. ``computed``: tokens whose KV is held; ``prefill_target``:
    tokens to prefill before decoding (the prompt, or prompt + output after a preemption).
    Per-step logs (inter-token gaps; drafted and accepted tokens) are reduced to per-request
    totals by :meth:`close` when the run ends."""

    def __init__(self, specs):
        n = len(specs)
        col = lambda a: np.array([getattr(s, a) for s in specs], dtype=float if a == "arrival_s" else np.int64)  # noqa: E731
        self.id, self.arrival_s = col("request_id"), col("arrival_s")
        self.input_len, self.output_len = col("input_len"), col("output_len")
        self.prefill_target = self.input_len.copy()
        z = lambda: np.zeros(n, dtype=np.int64)  # noqa: E731
        self.computed, self.generated, self.blocks, self.preemptions = z(), z(), z(), z()
        self.drafted, self.accepted, self.num_drafts, self.chunks = z(), z(), z(), z()
        self.replica = np.full(n, -1, dtype=np.int64)
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        self.send_s, self.first_token_s, self.last_token_s, self.finish_s = nan(), nan(), nan(), nan()
        self.finished = np.zeros(n, dtype=bool)
        self.failed = np.zeros(n, dtype=bool)
        self.fail_reason = [""] * n
        self.itl_log = _Columns((np.int64, float))            # request, gap since its last token (s)
        self.spec_log = _Columns((np.int64, np.int64, np.int64))   # request, drafted, accepted per step
        self._itl_ids, self._itl_gaps = np.zeros(0, dtype=np.int64), np.zeros(0)

    def __len__(self) -> int:
        return len(self.id)

    def fail(self, i: int, reason: str, now: float) -> None:
        self.failed[i], self.finished[i], self.fail_reason[i], self.finish_s[i] = True, True, reason, now

    def close(self) -> None:
        """Reduce the per-step logs to per-request totals."""
        n = len(self)
        self._itl_ids, self._itl_gaps = self.itl_log.arrays()
        self.chunks = np.bincount(self._itl_ids, minlength=n)
        ids, k, a = self.spec_log.arrays()
        self.num_drafts = np.bincount(ids, weights=k > 0, minlength=n).astype(np.int64)
        self.drafted = np.bincount(ids, weights=k, minlength=n).astype(np.int64)
        self.accepted = np.bincount(ids, weights=a, minlength=n).astype(np.int64)

    def itls(self) -> np.ndarray:
        """Inter-token (chunk) gaps of the requests that did not fail, in seconds."""
        return self._itl_gaps[~self.failed[self._itl_ids]]

