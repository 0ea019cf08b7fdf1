"""Threads that fit the machine: an explicit choice wins, and a machine kept busy by others gets one thread."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

from nas import system

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

from load import start_load, stop_load  # noqa: E402


def test_an_explicit_thread_count_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert system.pick_threads() == system.Threads(3, "OMP_NUM_THREADS")
    assert system.pick_threads(requested=5).n == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "²")  # not a count: ignored, not a crash
    assert system.pick_threads().n >= 1


def test_a_machine_busy_with_other_work_gets_one_thread_per_worker(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    load = start_load(system.usable_cores(), seconds=30)
    try:
        assert all(p.is_alive() for p in load)
        picked = system.pick_threads()
        assert picked.n == 1, picked
        assert "busy with other work" in picked.why
        assert system.pick_threads(n_workers=4).n == 1  # never zero
    finally:
        stop_load(load)


def test_usable_cores_is_this_process_affinity():
    assert 1 <= system.usable_cores() <= multiprocessing.cpu_count()
