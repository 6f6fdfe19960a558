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


class LogHistogram:
    """A streaming distribution of durations (s), order-independent and of fixed size: counts in
    log-spaced bins (BINS_PER_DECADE a decade, so a percentile is within 0.06% of the exact one)
    and the exact sum in integer nanoseconds (so the mean does not depend on logging order)."""

    BINS_PER_DECADE = 2000
    LO_S, DECADES = 1e-7, 11

    def __init__(self):
        self.counts = np.zeros(self.BINS_PER_DECADE * self.DECADES + 2, dtype=np.int64)
        self.n = 0
        self.sum_ns = 0

    def add(self, values_s: np.ndarray) -> None:
        v = np.asarray(values_s, dtype=float)
        v = v[np.isfinite(v)]
        if not len(v):
            return
        x = np.log10(np.maximum(v, self.LO_S * 0.5) / self.LO_S) * self.BINS_PER_DECADE
        idx = np.clip(np.floor(x).astype(np.int64) + 1, 0, len(self.counts) - 1)   # bin 0: below LO_S
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.n += len(v)
        self.sum_ns += int(np.round(v * 1e9).astype(np.int64).sum())

    def _centers(self) -> np.ndarray:
        i = np.arange(len(self.counts))
        return np.where(i == 0, 0.0, self.LO_S * 10 ** ((i - 0.5) / self.BINS_PER_DECADE))

    def percentile(self, p: float) -> float:
        """numpy's linear-interpolation percentile, over bin centres."""
        rank = p / 100 * (self.n - 1)
        cum = np.cumsum(self.counts)
        c = self._centers()
        lo = c[int(np.searchsorted(cum, np.floor(rank), side="right"))]
        hi = c[int(np.searchsorted(cum, np.ceil(rank), side="right"))]
        return float(lo + (hi - lo) * (rank - np.floor(rank)))

    def mean(self) -> float:
        return self.sum_ns / self.n / 1e9

    def std(self) -> float:
        c, w = self._centers(), self.counts / self.n
        m = float((c * w).sum())
        return float(np.sqrt(max(float((c * c * w).sum()) - m * m, 0.0)))


class _GapLog:
    """Inter-token gaps, reduced every ``BUFFER`` entries: per-request chunk counts and one
    LogHistogram, so memory stays flat however many tokens a run emits."""

    BUFFER = 1 << 18

    def __init__(self, n: int):
        self.buf = _Columns((np.int64, float))
        self.chunks = np.zeros(n, dtype=np.int64)
        self.hist = LogHistogram()

    def append(self, ids: np.ndarray, gaps: np.ndarray) -> None:
        self.buf.append(ids, gaps)
        if self.buf.size >= self.BUFFER:
            self.reduce()

    def reduce(self) -> None:
        ids, gaps = self.buf.arrays()
        self.chunks += np.bincount(ids, minlength=len(self.chunks))
        self.hist.add(gaps)
        self.buf.size = 0


class Requests:
    """Per-request state as columns. ``computed``: tokens whose KV is held; ``prefill_target``:
    tokens to prefill before decoding (the prompt, or prompt + output after a preemption).
    Inter-token gaps go to a bounded log (per-request counts + a histogram); drafted and accepted
    tokens are added up per request as steps apply."""

    def __init__(self, specs):
        n = len(specs)
        col = lambda a: np.array([getattr(s, a) for s in specs], dtype=float if a == "arrival_s" else np.int64)  # noqa: E731
        self.id, self.arrival_s = col("request_id"), col("arrival_s")
        self.input_len, self.output_len = col("input_len"), col("output_len")
        self.conversation, self.prefix_len = col("conversation"), col("prefix_len")
        self.prefill_target = self.input_len.copy()
        z = lambda: np.zeros(n, dtype=np.int64)  # noqa: E731
        self.computed, self.generated, self.blocks, self.preemptions = z(), z(), z(), z()
        self.drafted, self.accepted, self.num_drafts, self.cached_tokens = z(), z(), z(), z()
        self.replica = np.full(n, -1, dtype=np.int64)
        self.dp_rank = np.zeros(n, dtype=np.int64)              # attention-DP rank within its worker
        self.user = np.full(n, -1, dtype=np.int64)             # closed-loop user that sent it (-1: open loop)
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        self.send_s, self.first_token_s, self.last_token_s, self.finish_s = nan(), nan(), nan(), nan()
        self.finished = np.zeros(n, dtype=bool)
        self.failed = np.zeros(n, dtype=bool)
        self.fail_reason = [""] * n
        self.itl_log = _GapLog(n)

    def __len__(self) -> int:
        return len(self.id)

    @property
    def chunks(self) -> np.ndarray:
        return self.itl_log.chunks

    def fail(self, i: int, reason: str, now: float) -> None:
        self.failed[i], self.finished[i], self.fail_reason[i], self.finish_s[i] = True, True, reason, now

    def add_spec(self, ids: np.ndarray, drafted: np.ndarray, accepted: np.ndarray) -> None:
        """One step's drafted and accepted tokens per decoding request (ids distinct)."""
        self.num_drafts[ids] += drafted > 0
        self.drafted[ids] += drafted
        self.accepted[ids] += accepted

    def close(self) -> None:
        """Fold in the gaps still buffered."""
        self.itl_log.reduce()

    def itl_stats(self) -> LogHistogram:
        """Inter-token (chunk) gaps of every request that emitted more than one chunk, in seconds."""
        return self.itl_log.hist
