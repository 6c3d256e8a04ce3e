"""The progress line of a corpus job: rows/s, tokens/s, ETA (when the inputs' row counts are
known), rows skipped as already done."""

from __future__ import annotations

import time

from tqdm.auto import tqdm


class Progress:
    def __init__(self, total_rows: int | None, *, enabled: bool = True):
        self.bar = tqdm(
            total=total_rows, unit="rows", desc="embed-dataset", disable=not enabled, smoothing=0.1
        )
        self.start = time.perf_counter()
        self.tokens = 0
        self.skipped = 0

    def skip(self, rows: int) -> None:
        """Rows of shards an earlier run finished (not counted in the rates)."""
        self.skipped += rows
        self.bar.update(rows)
        self.bar.set_postfix_str(f"{self.skipped:,} rows already done", refresh=False)

    def advance(self, rows: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(rows)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tokens/s", refresh=False)

    def close(self) -> None:
        self.bar.close()
