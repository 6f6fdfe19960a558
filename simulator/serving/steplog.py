"""The per-step log, in bounded memory: rows are buffered per replica, reduced to running statistics
in chunks, and either kept (short runs: sweeps, plans, tests) or spilled to disk chunk by chunk
(``moesd simulate``, whose steps.csv can hold millions of rows).

Everything a summary or report needs from the steps (:class:`StepStats`) is accumulated per replica
and combined in replica order when the run ends, so the numbers do not depend on how the replicas'
steps interleaved in time (the coasting and step-by-step engine paths log them in different
orders; tests compare the two byte for byte). Rows of one replica are logged in time order, so
the table sorted by (start, replica) is a k-way merge of the replicas' chunk streams.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np
import pandas as pd

STEP_FIELDS = ("replica", "start_s", "duration_s", "num_decode", "num_prefill", "num_tokens", "query_len",
               "draft_s", "attention_s", "gemm_s", "moe_s", "comm_s", "overhead_s", "active_experts",
               "expert_weight_bytes", "emitted_tokens", "drafted_tokens", "accepted_tokens", "kv_blocks_used",
               "num_waiting", "preemptions")
INT_FIELDS = ("replica", "num_decode", "num_prefill", "num_tokens", "query_len", "emitted_tokens", "drafted_tokens",
              "accepted_tokens", "kv_blocks_used", "num_waiting", "preemptions")
PARTS = ("draft_s", "attention_s", "gemm_s", "moe_s", "comm_s", "overhead_s")
_C = {f: i for i, f in enumerate(STEP_FIELDS)}
TIMELINE_BINS = 4096


class StepStats:
    """Running reductions of step rows: totals for the summary, and bounded tables for the report
    (a timeline with at most TIMELINE_BINS bins whose width doubles as time grows; means per
    decode batch size; mean active experts per step token count)."""

    def __init__(self, bin_s: float = 0.25):
        self.n = 0
        self.n_decode_steps = 0
        self.sums = dict.fromkeys(("duration_s", "num_decode", "active_experts", "expert_weight_bytes", *PARTS), 0.0)
        self.max_waiting = 0
        self.bin_s = bin_s
        self.tl_tokens = np.zeros(TIMELINE_BINS)      # emitted tokens per bin (by step end time)
        self.tl_decode = np.zeros(TIMELINE_BINS)      # sum of num_decode per bin
        self.tl_steps = np.zeros(TIMELINE_BINS)
        self.by_batch: dict = {}                      # num_decode -> [steps, sums of PARTS...]
        self.by_tokens: dict = {}                     # num_tokens -> [steps, sum of active experts]

    def update(self, a: np.ndarray) -> None:
        """Fold in a chunk of rows (an array in STEP_FIELDS column order)."""
        if not len(a):
            return
        col = lambda f: a[:, _C[f]]  # noqa: E731
        dec = col("num_decode") > 0
        self.n += len(a)
        self.n_decode_steps += int(dec.sum())
        for f in self.sums:
            v = col(f)
            self.sums[f] += float((v[dec] if f == "num_decode" else v).sum())
        self.max_waiting = max(self.max_waiting, int(col("num_waiting").max()))
        end = col("start_s") + col("duration_s")
        while end.max() >= self.bin_s * TIMELINE_BINS:
            self._coarsen()
        idx = (end // self.bin_s).astype(np.int64)
        self.tl_tokens += np.bincount(idx, weights=col("emitted_tokens"), minlength=TIMELINE_BINS)
        self.tl_decode += np.bincount(idx, weights=col("num_decode"), minlength=TIMELINE_BINS)
        self.tl_steps += np.bincount(idx, minlength=TIMELINE_BINS)
        self._group(self.by_batch, col("num_decode"), np.c_[col(PARTS[0]), *[col(p) for p in PARTS[1:]]])
        self._group(self.by_tokens, col("num_tokens"), col("active_experts")[:, None])

    @staticmethod
    def _group(table: dict, keys: np.ndarray, values: np.ndarray) -> None:
        u, inv = np.unique(keys.astype(np.int64), return_inverse=True)
        counts = np.bincount(inv, minlength=len(u))
        sums = np.stack([np.bincount(inv, weights=values[:, j], minlength=len(u)) for j in range(values.shape[1])], 1)
        for key, c, s in zip(u.tolist(), counts.tolist(), sums):
            row = table.get(key)
            if row is None:
                table[key] = [c, *s.tolist()]
            else:
                row[0] += c
                for j, x in enumerate(s.tolist(), 1):
                    row[j] += x

    def _coarsen(self) -> None:
        for name in ("tl_tokens", "tl_decode", "tl_steps"):
            v = getattr(self, name)
            setattr(self, name, np.concatenate([v.reshape(-1, 2).sum(1), np.zeros(TIMELINE_BINS // 2)]))
        self.bin_s *= 2

    def merge(self, other: "StepStats") -> None:
        """Add another replica's statistics (call in replica order: float sums are order-sensitive)."""
        while self.bin_s < other.bin_s:
            self._coarsen()
        while other.bin_s < self.bin_s:
            other._coarsen()
        self.n += other.n
        self.n_decode_steps += other.n_decode_steps
        for f in self.sums:
            self.sums[f] += other.sums[f]
        self.max_waiting = max(self.max_waiting, other.max_waiting)
        self.tl_tokens += other.tl_tokens
        self.tl_decode += other.tl_decode
        self.tl_steps += other.tl_steps
        for table, theirs in ((self.by_batch, other.by_batch), (self.by_tokens, other.by_tokens)):
            for key, row in sorted(theirs.items()):
                mine = table.setdefault(key, [0] + [0.0] * (len(row) - 1))
                for j, x in enumerate(row):
                    mine[j] += x

    def timeline(self, max_bins: int = 240) -> pd.DataFrame:
        """Output tok/s and mean decode batch over time, in at most ``max_bins`` bins."""
        last = int(np.flatnonzero(self.tl_steps)[-1]) + 1 if self.tl_steps.any() else 0
        k = max(1, -(-last // max_bins))
        pad = (-last) % k
        agg = [np.concatenate([v[:last], np.zeros(pad)]).reshape(-1, k).sum(1)
               for v in (self.tl_tokens, self.tl_decode, self.tl_steps)]
        width = self.bin_s * k
        with np.errstate(invalid="ignore", divide="ignore"):
            return pd.DataFrame({"time_s": (np.arange(len(agg[0])) + 0.5) * width,
                                 "output_tok_s": agg[0] / width, "mean_batch": agg[1] / agg[2]})

    def parts_by_batch(self) -> pd.DataFrame:
        """Mean per-step time of each part (ms) by decode batch size."""
        rows = [{"num_decode": b, **{p: s / c * 1e3 for p, s in zip(PARTS, sums)}}
                for b, (c, *sums) in sorted(self.by_batch.items())]
        return pd.DataFrame(rows, columns=["num_decode", *PARTS])

    def experts_by_tokens(self) -> pd.DataFrame:
        rows = [(t, s / c) for t, (c, s) in sorted(self.by_tokens.items())]
        return pd.DataFrame(rows, columns=["num_tokens", "active_experts"])


class StepLog:
    """Rows per replica, reduced in chunks of ``chunk_rows``; with ``spill_dir`` the chunks go to
    disk (memory stays flat however long the run), else they are kept for :meth:`frame`."""

    def __init__(self, replicas: int, spill_dir: Path | None = None, chunk_rows: int = 1 << 15):
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.chunk_rows = chunk_rows
        self._buf: list = [[] for _ in range(replicas)]
        self._chunks: list = [[] for _ in range(replicas)]    # arrays, or .npy paths when spilling
        self._stats = [StepStats() for _ in range(replicas)]
        self.stats: StepStats | None = None

    def append(self, replica: int, row: tuple) -> None:
        buf = self._buf[replica]
        buf.append(row)
        if len(buf) >= self.chunk_rows:
            self._flush(replica)

    def _flush(self, r: int) -> None:
        if not self._buf[r]:
            return
        a = np.array(self._buf[r], dtype=float)
        self._buf[r] = []
        self._stats[r].update(a)
        if self.spill_dir is None:
            self._chunks[r].append(a)
        else:
            path = self.spill_dir / f"steps_r{r}_{len(self._chunks[r]):06d}.npy"
            np.save(path, a)
            self._chunks[r].append(path)

    def close(self) -> "StepLog":
        """Flush every buffer and combine the replicas' statistics (in replica order)."""
        for r in range(len(self._buf)):
            self._flush(r)
        total = StepStats()
        for s in self._stats:
            total.merge(s)
        self.stats = total
        return self

    def __len__(self) -> int:
        return self.stats.n if self.stats is not None else sum(len(b) for b in self._buf)

    def _replica_rows(self, r: int):
        for c in self._chunks[r]:
            yield from (np.load(c) if isinstance(c, Path) else c)

    def sorted_chunks(self, rows: int = 1 << 16):
        """The whole table in (start_s, replica) order, as DataFrames of at most ``rows`` rows."""
        if len(self._chunks) == 1:          # one replica: its rows are already in time order
            for c in self._chunks[0]:
                a = np.load(c) if isinstance(c, Path) else c
                for j in range(0, len(a), rows):
                    yield _frame(a[j:j + rows])
            if not self._chunks[0]:
                yield _frame(np.zeros((0, len(STEP_FIELDS))))
            return
        streams = [((row[_C["start_s"]], r, i, row) for i, row in enumerate(self._replica_rows(r)))
                   for r in range(len(self._chunks))]
        out = []
        for *_, row in heapq.merge(*streams, key=lambda x: (x[0], x[1], x[2])):
            out.append(row)
            if len(out) >= rows:
                yield _frame(np.array(out))
                out = []
        if out or not len(self):
            yield _frame(np.array(out).reshape(-1, len(STEP_FIELDS)))

    def frame(self) -> pd.DataFrame:
        """The whole table in memory (short runs; a spilled log is read back)."""
        return pd.concat(list(self.sorted_chunks()), ignore_index=True)

    def write_csv(self, path: Path) -> None:
        """steps.csv written chunk by chunk (memory stays flat)."""
        with open(path, "w", newline="") as f:
            for i, df in enumerate(self.sorted_chunks()):
                df.to_csv(f, index=False, header=i == 0, float_format="%.9g")


def _frame(a: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(a, columns=list(STEP_FIELDS))
    for f in INT_FIELDS:
        df[f] = df[f].astype(np.int64)
    return df
