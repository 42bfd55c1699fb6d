"""`make bench` keeps working: the load generator drives real servers, and the report turns
results into a table and a chart. Figures are not asserted (benchmarks are not timed tests);
that every delivery arrived and was counted is."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import require

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, results: Path, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env={**os.environ, "BENCH_RESULTS": str(results)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.timeout(180)
def test_local_fanout_and_report(tmp_path: Path) -> None:
    require("taskset", "pin the benchmark's server and load generator to cores")
    table = run("local_fanout.py", tmp_path, "--sizes", "10", "--servers", "wschat,websockets")
    assert "| 10 | wschat (uvicorn) |" in table

    rows = json.loads((tmp_path / "local_fanout.json").read_text())["rows"]
    assert [row["server"] for row in rows] == [
        "wschat (uvicorn)",
        "websockets + broadcast() (reference)",
    ]
    for row in rows:
        assert row["server_us_per_delivery"] > 0 and row["deliveries_per_s"] > 0
        assert math.isfinite(row["max"])  # every paced delivery reached every receiver

    run("report.py", tmp_path, "--no-doc")
    assert "### 1. Local room fan-out (uvicorn)" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.timeout(120)
def test_the_storm_welcomes_everyone_and_counts_presence_frames(tmp_path: Path) -> None:
    require("taskset", "pin the benchmark's server and clients to cores")
    scenarios = "json-rooms,json-one"
    table = run(
        "storm.py", tmp_path, "--clients", "60", "--in-flight", "20", "--scenarios", scenarios,
        "--rounds", "2",
    )  # fmt: skip
    assert "JSON, one room vs each into its own room" in table
    rows = {row["key"]: row for row in json.loads((tmp_path / "storm.json").read_text())["rows"]}
    assert list(rows) == scenarios.split(",")
    for row in rows.values():
        assert row["clients"] == 60 and row["cpu_ms_per_connect"] > 0
        assert len(row["cpu_ms_rounds"]) == 2 and row["cpu_ms_per_connect"] in row["cpu_ms_rounds"]
    assert rows["json-rooms"]["presence_max"] == 0  # a room of one hears no one
    assert 1 <= rows["json-one"]["presence_max"] <= rows["json-one"]["presence_bound"]


@pytest.mark.timeout(120)
def test_the_lambda_storm_counts_the_posts_it_cost(tmp_path: Path) -> None:
    require("taskset", "pin the benchmark's server and clients to cores")
    table = run("storm.py", tmp_path, "--clients", "8", "--scenarios", "lambda-one")
    (row,) = json.loads((tmp_path / "storm.json").read_text())["rows"]
    assert row["clients"] == 8 and row["frames"]["welcome"] == 8
    # Each join is told inline to the members registered when it is announced: two that
    # register before either announces hear each other's join.
    assert 0 < row["frames"]["presence"] <= 8 * 7
    assert f"8 joins cost {sum(row['frames'].values())} posts" in table


@pytest.mark.timeout(120)
def test_connect_profile_says_where_a_connect_goes(tmp_path: Path) -> None:
    table = run("connect_profile.py", tmp_path, "--connections", "50", "--top", "10")
    (row,) = json.loads((tmp_path / "connect_profile.json").read_text())["rows"]
    assert row["cpu_us_per_connect"] > 0 and row["steps"]["registration: ChatCore.connect"] > 0
    # Every connect passes through the chat's socket path; which of its lines make the top
    # ten of 50 connects depends on the machine's timing.
    assert row["steps"]["the chat's socket path, from its ASGI call"] > 0
    assert "the chat's socket path, from its ASGI call" in table


@pytest.mark.timeout(120)
def test_idle_memory_says_where_an_idle_connection_goes(tmp_path: Path) -> None:
    require("taskset", "pin the benchmark's clients to a core")
    table = run("idle_memory.py", tmp_path, "--connections", "50", "--top", "40")
    (row,) = json.loads((tmp_path / "idle_memory.json").read_text())["rows"]
    assert row["connections"] == 50 and row["traced_kib_per_connection"] > 0
    assert "handler/local/socket.py:" in table  # the chat's own lines are among them


@pytest.mark.timeout(180)
def test_lambda_benchmarks_run_and_count_every_post(tmp_path: Path) -> None:
    require("taskset", "pin the benchmark's stand-ins and client to cores")
    run("lambda_fanout.py", tmp_path, "--connections", "100", "--posts", "100")
    rows = json.loads((tmp_path / "lambda_fanout.json").read_text())["rows"]
    clients = [row for row in rows if "client" in row]
    assert len(clients) == 2 and all(row["cpu_us_per_post"] > 0 for row in clients)
    assert all(row["peak"] <= 32 for row in rows if "peak" in row)

    # The script asserts that the jobs posted to every member exactly as often as the room
    # has members, and that no job left work behind.
    run("lambda_big_room.py", tmp_path, "--members", "600", "--chunk", "250")
    (row,) = json.loads((tmp_path / "lambda_big_room.json").read_text())["rows"]
    assert row["jobs"] == 3 and row["posts_per_job_max"] == 250


@pytest.mark.timeout(120)
def test_the_dashboard_picture_is_drawn_from_scrapes(tmp_path: Path) -> None:
    require("redis-server", "the picture's server runs on Redis, for the pub/sub lag panel")
    picture = tmp_path / "dashboard.png"
    said = run("dashboard.py", tmp_path, "--seconds", "8", "--out", str(picture))
    assert picture.read_bytes().startswith(b"\x89PNG") and "scrapes" in said
