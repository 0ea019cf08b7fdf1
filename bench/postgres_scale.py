"""How far one PostgreSQL server goes: trials per minute and open connections with 1, 8 and 32 workers on one
study (`nas search --study-trials N`), tiny CPU trials, on a throw-away server started here (tests/pg_server.py).

    python bench/postgres_scale.py [--workers 1,8,32] [--trials 64]

W workers run as processes of `nas search --workers K` (as the tasks of a Slurm array would: each process
and each of its workers opens its own connection pool). Trials per minute are counted in the storage,
from the first trial's start to the last one's end (process start-up left out); connections are
sampled from pg_stat_activity every 0.2 s (the peak, and the mean while trials ran).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import pg_server  # noqa: E402  (the tests' throw-away server)
from conftest import write_idx_dataset  # noqa: E402  (tiny IDX data in the real format)

SPACE = """
name: scale
budget: {epochs: 1, val_fraction: 0.2}
architecture: {blocks: 1, block: {channels: 4}, head: {layers: 1, units: 16}}
training: {lr: {float: [1.0e-3, 1.0e-2], log: true}, batch_size: 32}
"""


def layout(workers: int) -> list[int]:
    """Workers per process: at most 8 in one (nas allows 4 per core here), as several array tasks would."""
    per = min(workers, 8)
    return [per] * (workers // per) + ([workers % per] if workers % per else [])


def sample(url: str, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        try:
            seen.append(pg_server.connections(url))
        except Exception:  # the server busy for a moment: the next sample
            pass
        time.sleep(0.2)


def measure(url: str, workers: int, trials: int, space: Path, data: Path) -> dict:
    import optuna

    study = f"scale-{workers}"
    env = os.environ | {"NAS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    seen: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(url, stop, seen), daemon=True)
    sampler.start()
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "nas.cli", "search", "--space", str(space), "--study", study,
                               "--storage", url, "--data-dir", str(data), "--study-trials", str(trials),
                               "--workers", str(k), "--seed", str(i), "--pruner", "none", "--device", "cpu", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for i, k in enumerate(layout(workers))]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    assert not errors, errors
    done = optuna.load_study(study_name=study, storage=url).get_trials()
    assert len(done) == trials, len(done)
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {"workers": workers, "processes": len(procs), "trials": len(done), "wall_s": wall,
            "per_min": len(done) / span * 60, "peak_conn": max(seen, default=0),
            "mean_conn": sum(seen) / max(len(seen), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,8,32", help="comma-separated worker counts")
    p.add_argument("--trials", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, pg_server.postgres(max_connections=300) as url:
        space = Path(tmp) / "scale.yaml"
        space.write_text(SPACE)
        data = write_idx_dataset(Path(tmp) / "data")
        print(f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}; {args.trials} trials of 1 epoch "
              f"on 320 images each, PostgreSQL 15 on 127.0.0.1 (max_connections=300)")
        print("| workers | processes | trials/min | wall (s) | connections: peak | mean |")
        print("|---:|---:|---:|---:|---:|---:|")
        for w in (int(v) for v in args.workers.split(",")):
            r = measure(url, w, args.trials, space, data)
            print(f"| {r['workers']} | {r['processes']} | {r['per_min']:.0f} | {r['wall_s']:.0f} | {r['peak_conn']} | "
                  f"{r['mean_conn']:.1f} |", flush=True)
        print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
