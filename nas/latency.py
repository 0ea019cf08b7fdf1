"""How long a network takes to answer, measured, never estimated: through ONNX Runtime on this machine's
CPU (one thread, as a small device or one server core runs it), and with PyTorch on a CUDA device.

Weights do not change the time of a dense network, so a net is timed right after it is built, before
it trains, and once per study (`timed_once`, keyed by `arch_key`): a search knows each net's latency,
like its size, before spending an epoch on it, and one architecture has one latency whatever its
learning rate. Other processes on the machine only ever add time, so the figure is a low percentile of
many runs, with the spread of the faster half recorded beside it as the measurement's noise; and as a
whole stretch of runs can be slowed alike on a busy machine (the load on the other half of a shared
core), the net is timed in WINDOWS short windows a PAUSE apart, each batch size taking its turn in each
window (a burst of load hits both alike), and the lowest window's figure is kept.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from nas.spec import ArchSpec

BATCHES = (1, 64)  # one image (an app answering a user), and a batch (a server)
WARMUP = 2  # runs before each block of timed ones: the first allocate, pick kernels and refill the caches
MIN_RUNS, MAX_RUNS = 5, 200
SECONDS = 0.06  # per window, timing each batch size stops after this long (or MAX_RUNS)
WINDOWS, PAUSE = 4, 0.05  # windows, and seconds between them: under a second per architecture, once per study
MAX_WINDOWS, NOISY = 8, 0.1  # more windows while the fastest one's spread is over this share of its figure
PERCENTILE = 20  # the figure: contention only adds time, so a low percentile is the net's own speed
SPREAD = (10, 50)  # the noise recorded beside it: the 50th minus the 10th percentile


def onnx_latency(model: nn.Module, input_shape: tuple[int, int, int], seconds: float = SECONDS) -> dict[str, float]:
    """`model`'s milliseconds per call at each of BATCHES on the CPU through ONNX Runtime (see `low_percentiles`),
    as {"latency_ms": batch 1, "latency_ms_64": batch 64, and their spreads}; the model is exported to memory first."""
    cpu = copy.deepcopy(model).cpu().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        # This exporter takes ~0.05 s for a small net, the dynamo one ~1 s: timing must stay cheap per trial.
        torch.onnx.export(cpu, (torch.zeros(1, *input_shape),), buffer, dynamo=False, input_names=["images"],
                          dynamic_axes={"images": {0: "batch"}})
    return session_latency(buffer.getvalue(), input_shape, seconds)


def session_latency(onnx: bytes | Path, input_shape: tuple[int, int, int], seconds: float = SECONDS) -> dict[str, float]:
    """Milliseconds per call of an ONNX model (bytes or a file) at each of BATCHES, one CPU thread."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # pinned: the same figure on a busy machine
    session = onnxruntime.InferenceSession(onnx if isinstance(onnx, bytes) else str(onnx), options,
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images = {n: {name: np.random.default_rng(0).random((n, *input_shape), dtype=np.float32)} for n in BATCHES}
    return low_percentiles({_key(n): (lambda x=x: session.run(None, x)) for n, x in images.items()}, seconds)


def torch_latency(model: nn.Module, input_shape: tuple[int, int, int], device: torch.device,
                  seconds: float = SECONDS) -> dict[str, float]:
    """Milliseconds per call of `model` on `device` (a GPU) at each of BATCHES, in eval mode."""
    was_training = model.training
    model.eval()
    images = {n: torch.rand(n, *input_shape, device=device) for n in BATCHES}

    def call(x: torch.Tensor) -> None:
        model(x)
        torch.cuda.synchronize(device)

    try:
        with torch.inference_mode():
            return low_percentiles({_key(n, "gpu_"): (lambda x=x: call(x)) for n, x in images.items()}, seconds)
    finally:
        model.train(was_training)


def low_percentiles(calls: dict[str, Callable[[], object]], seconds: float = SECONDS,
                    windows: int = WINDOWS) -> dict[str, float]:
    """For each named call, its PERCENTILE-th percentile in milliseconds, and under `spread_key(name)` its
    SPREAD, in the fastest of `windows` windows of `timed_runs`, PAUSE apart (`lowest_window`); up to
    MAX_WINDOWS while the first call's fastest window is still `noisy` (all slowed by a burst of load)."""
    timed = [timed_runs(calls, seconds)]
    while len(timed) < windows or (len(timed) < MAX_WINDOWS and noisy(lowest_window(timed), next(iter(calls)))):
        time.sleep(PAUSE)  # the next window meets the load at another moment
        timed.append(timed_runs(calls, seconds))
    return lowest_window(timed)


def noisy(figures: dict[str, float], key: str) -> bool:
    """Whether the figure under `key` has a spread over NOISY of it: a quiet window's runs agree within a few
    per cent, and one as spread as that was slowed too (docs/benchmarks.md)."""
    return figures[spread_key(key)] > NOISY * figures[key]


def lowest_window(windows: list[dict[str, list[float]]]) -> dict[str, float]:
    """Of each call's windows of run times (seconds), the lowest PERCENTILE-th percentile in milliseconds, and
    under `spread_key(name)` that window's SPREAD: other processes only ever add time, so the fastest window
    is the nearest to the net's own speed."""
    out = {}
    for key in windows[0]:
        cuts = min((statistics.quantiles(w[key], n=100, method="inclusive") for w in windows),
                   key=lambda c: c[PERCENTILE - 1])  # cuts[k - 1] is the k-th percentile
        out[key] = round(cuts[PERCENTILE - 1] * 1000, 4)
        out[spread_key(key)] = round((cuts[SPREAD[1] - 1] - cuts[SPREAD[0] - 1]) * 1000, 4)
    return out


def timed_runs(calls: dict[str, Callable[[], object]], seconds: float = SECONDS) -> dict[str, list[float]]:
    """Seconds of each timed run of each call. The calls take turns, a block of runs each: WARMUP untimed
    runs, then MIN_RUNS to MAX_RUNS timed ones, stopping once `seconds` have gone by (after MIN_RUNS). Not one
    run each in turn: a batch of 64 run between two single images evicts what the single image had in cache,
    and doubled its time (docs/benchmarks.md)."""
    times: dict[str, list[float]] = {}
    for key, call in calls.items():
        for _ in range(WARMUP):
            call()
        runs: list[float] = []
        stop = time.perf_counter() + seconds
        while len(runs) < MAX_RUNS and (len(runs) < MIN_RUNS or time.perf_counter() < stop):
            start = time.perf_counter()
            call()
            runs.append(time.perf_counter() - start)
        times[key] = runs
    return times


def spread_key(key: str) -> str:
    """Where the noise of the figure under `key` is kept: `latency_ms_64` -> `latency_spread_ms_64`."""
    return key.replace("latency_ms", "latency_spread_ms")


def arch_key(spec: ArchSpec, device: str = "cpu") -> str:
    """What a net's speed depends on, as a short hash: its layers and the device it is timed on, not how it
    is trained nor how its weights start (a learning rate does not change the time of a forward pass), nor
    its dropout (nothing at inference: the exported graph has none)."""
    d = spec.to_dict()
    layers = [d["readout"]] + [{k: v for k, v in layer.items() if k != "dropout"} for layer in d["blocks"] + d["head"]]
    return hashlib.sha256(json.dumps([layers, device], sort_keys=True).encode()).hexdigest()[:16]


def timed_once(key: str, read: Callable[[], Mapping[str, Any]], record: Callable[[str, Any], None],
               measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The times recorded under `key` (in the study, by `read` and `record`), or `measure()`d and recorded there.
    Read again after measuring: of two workers timing one net together, the first recorded figure stands."""
    name = f"latency:{key}"
    known = read().get(name)
    if known is None:
        times = measure()
        known = read().get(name)
        if known is None:
            record(name, times)
            known = times
    return dict(known)


def _key(n: int, prefix: str = "") -> str:
    return f"{prefix}latency_ms" if n == 1 else f"{prefix}latency_ms_{n}"
