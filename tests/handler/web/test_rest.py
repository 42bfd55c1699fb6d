"""The REST router's body checks, without a server: the nesting cap against the parser."""

from __future__ import annotations

import json
import random
from typing import Any

from handler.web.rest import _nested_deeper_than

# Strings that could fool a scanner that does not follow the parser's escapes.
TRICKY = ["", "[", "]{", '"', "\\", '\\"[', "\\\\", '"]]', "é[", "\u2028{", "\U0001f600]"]


def document(rng: random.Random, depth: int) -> Any:
    """A JSON value nested `depth` deep at most (a string or number is depth 0)."""
    if depth == 0 or rng.random() < 0.2:
        return rng.choice([*TRICKY, 7, None, True])
    if rng.random() < 0.5:
        return [document(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {rng.choice(TRICKY) + str(i): document(rng, depth - 1) for i in range(rng.randrange(4))}


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def test_the_nesting_cap_sees_what_the_parser_sees() -> None:
    rng = random.Random(25)
    for _ in range(2000):
        value = document(rng, rng.randrange(12))
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        for cap in range(11):
            assert _nested_deeper_than(body, cap) == (depth_of(value) > cap), body
