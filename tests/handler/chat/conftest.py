"""The core's test fixtures: a clock the test moves, and a delivery that records."""

from __future__ import annotations

import pytest

from tests.handler.chat.recording import FakeClock, RecordingDelivery


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def delivery() -> RecordingDelivery:
    return RecordingDelivery()
