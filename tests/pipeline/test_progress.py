from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from pipeline.progress import LogProgress


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize(("total", "steps"), [(1, 10), (7, 10), (1000, 10), (37, 4)])
def test_progress_log_from_threads(total, steps):
    logger = logging.getLogger(f"test-progress-{total}-{steps}")
    logger.setLevel(logging.INFO)
    keep = _Keep()
    logger.addHandler(keep)
    progress = LogProgress(logger, steps=steps)
    counter = {"n": 0}
    lock = threading.Lock()
    order = np.random.default_rng(total).permutation(total)

    def work(items):
        for _ in items:
            with lock:
                counter["n"] += 1
                done = counter["n"]
            progress.update("shards", done, total, units=3 * done)

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in np.array_split(order, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [int(line.split(":")[1].split("/")[0]) for line in keep.lines]
    assert keep.lines[-1].startswith(f"shards: {total}/{total} (100%), {3 * total} images")
    assert done == sorted(done)
    assert len(set(done)) == len(done)
    assert 1 <= len(keep.lines) <= steps + 1
    assert all("images/s" in line for line in keep.lines)


def test_log_progress_keeps_phases_apart():
    logger = logging.getLogger("test-progress-phases")
    logger.setLevel(logging.INFO)
    keep = _Keep()
    logger.addHandler(keep)
    progress = LogProgress(logger, steps=2)
    progress.update("stats", 5, 10)
    progress.update("shards", 1, 4)
    progress.update("stats", 10, 10)
    progress.update("shards", 4, 4, units=40)
    assert [line.split(",")[0] for line in keep.lines] == [
        "stats: 5/10 (50%)",
        "stats: 10/10 (100%)",
        "shards: 4/4 (100%)",
    ]
    assert keep.lines[0].endswith("files/s")
    assert "40 images" in keep.lines[-1]
