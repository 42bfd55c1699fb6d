"""The metrics of `wschat serve`'s /metrics, on Lambda: CloudWatch's embedded metric format.

A Lambda function has nothing to scrape, so each invocation writes what it counted as one
JSON line on stdout, which CloudWatch Logs turns into metrics (namespace `wschat`, dimension
`service`). The names are /metrics' without the `wschat_` prefix and `_total` suffix; the
labelled ones (close code, HTTP status, recovered) become dimensions of their own. A plain
line writer, not aws-lambda-powertools: bench/cold_start.py measures what each adds to the
WebSocket handler's cold import.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TextIO

NAMESPACE = "wschat"
SERVICE = "wschat"


class EmfMetrics:
    """What one invocation counted; `flush` writes it and starts over. Thread-safe (a fan-out
    posts from a pool)."""

    def __init__(self, out: Callable[[], TextIO] = lambda: sys.stdout) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._timings: list[float] = []

    def count(self, name: str, value: float = 1, **dimensions: str) -> None:
        with self._lock:
            self._counts[name, tuple(sorted(dimensions.items()))] += value

    # --- the core's Metrics port --------------------------------------------------------------

    def published(self, seconds: float) -> None:
        self.count("messages_received")
        with self._lock:
            self._timings.append(seconds * 1000)

    def resumed(self, recovered: bool) -> None:
        self.count("resume", recovered=str(recovered).lower())

    # --- the handlers' ------------------------------------------------------------------------

    def delivered(self, frames: int) -> None:
        self.count("messages_delivered", frames)

    def flush(self) -> None:
        """One EMF line per set of dimensions counted in this invocation; nothing if none."""
        with self._lock:
            counts, self._counts = self._counts, defaultdict(float)
            timings, self._timings = self._timings, []
        groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = defaultdict(dict)
        for (name, dimensions), value in counts.items():
            groups[dimensions][name] = value
        if timings:
            groups[()]["publish_duration"] = timings
        for dimensions, values in groups.items():
            self._out().write(json.dumps(_emf(dict(dimensions), values)) + "\n")


def _emf(dimensions: dict[str, str], values: dict[str, Any]) -> dict[str, Any]:
    units = {name: "Milliseconds" if name == "publish_duration" else "Count" for name in values}
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["service", *dimensions]],
                    "Metrics": [{"Name": name, "Unit": units[name]} for name in values],
                }
            ],
        },
        "service": SERVICE,
        **dimensions,
        **values,
    }
