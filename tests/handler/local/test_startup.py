"""What a worker does once started, before its first socket."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from handler.local.service import GC_YOUNG, create_local_app
from infra.settings import Settings


def test_a_started_worker_freezes_what_it_holds_out_of_the_collectors_sight() -> None:
    """Every full collection walked the modules and the app, which live as long as the
    worker: in a reconnect storm, a fifth of a connect's CPU (docs/performance.md)."""
    gc.unfreeze()
    try:
        with TestClient(create_local_app(Settings())) as client:
            frozen = gc.get_freeze_count()
            assert client.get("/healthz").status_code == 200
    finally:
        gc.unfreeze()
    assert frozen > 10_000  # the imports alone are tens of thousands of objects


def test_a_started_worker_collects_its_youngest_objects_less_often() -> None:
    """The collector's youngest generation ran every 700 container objects more made than
    freed: every few connects in a reconnect storm (docs/performance.md, section 11)."""
    before = gc.get_threshold()
    try:
        with TestClient(create_local_app(Settings())) as client:
            assert client.get("/healthz").status_code == 200
            assert gc.get_threshold() == (GC_YOUNG, *before[1:])
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
