"""The record every metric writes: one JSON line per scored folder and metric in results.jsonl.

Each line: {"metric", "value", "count", "images", "sampling_options", "options", "time", "seconds"}.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dice.errors import UserError

SMOKE_TEST_NOTE = "smoke test (random weights)"


@dataclass
class MetricResult:
    metric: str
    value: float
    count: int
    images: str
    sampling_options: dict | None = None
    options: dict = field(default_factory=dict)
    seconds: float = 0.0
    per_image: list | None = field(default=None, repr=False)  # for paired statistics in-process; not written

    @classmethod
    def mean_over_processes(cls, metric, totals, processes, collection, options, allow_incomplete, started) -> "MetricResult":
        """The mean of per-image scores from ``totals`` = [sum, count] summed over all processes."""
        score_sum, count = processes.sum(totals).tolist()
        options.update(num_processes=processes.world_size, allow_incomplete=allow_incomplete)
        return cls(metric=metric, value=score_sum / count, count=int(count), images=collection.path,
                   sampling_options=collection.sampling_options, options=options, seconds=time.time() - started)

    def to_record(self) -> dict:
        return {
            "metric": self.metric,
            "value": self.value,
            "count": self.count,
            "images": self.images,
            "sampling_options": self.sampling_options,
            "options": self.options,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
        }


def append_result(results_path: str | os.PathLike, result: MetricResult) -> dict:
    """Append one JSON line for ``result`` to results.jsonl (created with its folder) and return it."""
    record = result.to_record()
    Path(results_path).parent.mkdir(parents=True, exist_ok=True)
    with open(results_path, "a", encoding="utf-8") as file:
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
    return record


class ResultsFileError(UserError, ValueError):
    pass


class ResultsNotFound(UserError, FileNotFoundError):
    pass


def read_results(results_path: str | os.PathLike) -> list[dict]:
    if not Path(results_path).is_file():
        raise ResultsNotFound(f"Results file not found: {results_path}. The evaluation/*.py calc commands write it; pass its path")
    records = []
    for line_number, line in enumerate(Path(results_path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not {"images", "metric", "value"} <= record.keys():
                    raise ValueError('not an object with "images", "metric" and "value"')
            except ValueError as error:
                raise ResultsFileError(
                    f"{results_path} line {line_number} is not a result ({error}). Delete that line (the calc commands append one per score)"
                ) from None
            records.append(record)
    return records
