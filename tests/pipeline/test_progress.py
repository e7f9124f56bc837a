from __future__ import annotations

import logging
import threading
import time

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
    progress.update("shards", 0, total, units=0)  # the phase starts
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
    progress.update("stats", 0, 10)
    progress.update("shards", 0, 4, units=0)
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


def _lines(name: str) -> tuple[LogProgress, list[str]]:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    keep = _Keep()
    logger.addHandler(keep)
    return LogProgress(logger, steps=10), keep.lines


def test_the_rate_counts_from_the_phase_start_not_from_the_first_shard():
    progress, lines = _lines("test-progress-start")
    progress.update("shards", 0, 3, units=0)
    time.sleep(0.2)
    progress.update("shards", 1, 3, units=32)  # the first shard took 0.2 s
    (line,) = lines
    assert line.startswith("shards: 1/3 (33%), 32 images in 0.")
    rate = float(line.split(", ")[-1].split(" ")[0])
    assert 32 / 1.0 < rate <= 32 / 0.2  # not 32 images over the ~0 s since the first update


def test_a_resumed_phase_counts_only_what_it_wrote():
    progress, lines = _lines("test-progress-resume")
    progress.update("shards", 5, 8, units=160)  # five shards were written by an earlier run
    assert lines == []  # the start is not a line
    progress.update("shards", 8, 8, units=256)
    (line,) = lines
    assert line.startswith("shards: 8/8 (100%), 96 images in ")
    assert line.endswith("images/s")


def test_a_phase_done_at_its_first_update_has_no_rate():
    progress, lines = _lines("test-progress-at-once")
    progress.update("verify", 3, 3)
    assert lines == ["verify: 3/3 (100%), 0 shards in 0.0 s"]
