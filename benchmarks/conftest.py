"""
pytest's hooks for the micro-benchmarks (benchmarks/micro.py): with
C{--write-record}, their results become the record C{micro} of
docs/benchmarks.json, which docs/benchmarks.rst renders.

    python -m pytest benchmarks/micro.py --benchmark-json=/tmp/micro.json --write-record

pytest-benchmark hands its results to a hook only when it saves them as JSON,
hence C{--benchmark-json}.  Nothing here measures or asserts a speed.
"""

from __future__ import annotations

import sys
from typing import Any

import harness
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--write-record",
        action="store_true",
        help="write the results as the record micro of docs/benchmarks.json "
        "(needs --benchmark-json)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--write-record") and not config.getoption(
        "benchmark_json", None
    ):
        raise pytest.UsageError("--write-record needs --benchmark-json=FILE")


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]
) -> None:
    if not config.getoption("--write-record"):
        return
    figures: dict[str, Any] = {}
    rows = []
    for result in output_json["benchmarks"]:
        name = result["name"].removeprefix("test_")
        stats = result["stats"]
        runs = stats["rounds"]
        figures[f"{name}.time"] = {
            "median": stats["median"] * 1e6,
            "min": stats["min"] * 1e6,
            "max": stats["max"] * 1e6,
            "runs": runs,
            "unit": "µs",
        }
        row = [name.replace("_", " "), f"{name}.time", None]
        for unit, rate in result.get("extra_info", {}).items():
            # The rate at the median round; the fastest round gives the
            # highest rate, the slowest the lowest.
            perRound = rate * stats["median"]
            figures[f"{name}.rate"] = {
                "median": rate,
                "min": perRound / stats["max"],
                "max": perRound / stats["min"],
                "runs": runs,
                "unit": unit,
            }
            row[2] = f"{name}.rate"
        rows.append(row)
    table = {
        "title": "Micro-benchmarks: time per round, and the rate",
        "header": ["benchmark", "a round", "rate"],
        "rows": rows,
    }
    command = " ".join(["python -m pytest", *sys.argv[1:]])
    measures = ["caretproto/", "benchmarks/micro.py"]
    entry = harness.record(command, figures, {"micro": table}, measures=measures)
    harness.writeRecord("micro", entry)
