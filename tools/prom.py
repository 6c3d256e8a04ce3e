"""Reading Prometheus text exposition: one number per metric name, summed over its labels."""

from __future__ import annotations

import re


def metric_sum(text: str, name: str) -> float | None:
    """The sum of every series called exactly `name` (any labels), or None if there is none.

    Per-model series (`{model="..."}`) add up to the server's total.
    """
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.M)
    values = [float(v) for v in pattern.findall(text)]
    return sum(values) if values else None
