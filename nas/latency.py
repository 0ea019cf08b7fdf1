"""How long a network takes to answer, measured, never estimated: through ONNX Runtime on this machine's
CPU (one thread, as a small device or one server core runs it), and with PyTorch on a CUDA device.

Weights do not change the time of a dense network, so a net is timed right after it is built, before
it trains: a search knows each net's latency, like its size, before spending an epoch on it.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

BATCHES = (1, 64)  # one image (an app answering a user), and a batch (a server)
WARMUP = 3  # runs before timing: the first ones allocate and pick kernels
MIN_RUNS, MAX_RUNS = 5, 200
SECONDS = 0.1  # timing each batch size stops after this long (or MAX_RUNS), so a net costs well under a second


def onnx_latency(model: nn.Module, input_shape: tuple[int, int, int], seconds: float = SECONDS) -> dict[str, float]:
    """`model`'s median milliseconds per call at each of BATCHES on the CPU through ONNX Runtime,
    as {"latency_ms": batch 1, "latency_ms_64": batch 64}; the model is exported to memory first."""
    cpu = copy.deepcopy(model).cpu().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        # This exporter takes ~0.05 s for a small net, the dynamo one ~1 s: timing must stay cheap per trial.
        torch.onnx.export(cpu, (torch.zeros(1, *input_shape),), buffer, dynamo=False, input_names=["images"],
                          dynamic_axes={"images": {0: "batch"}})
    return session_latency(buffer.getvalue(), input_shape, seconds)


def session_latency(onnx: bytes | Path, input_shape: tuple[int, int, int], seconds: float = SECONDS) -> dict[str, float]:
    """Median milliseconds per call of an ONNX model (bytes or a file) at each of BATCHES, one CPU thread."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # pinned: the same figure on a busy machine
    session = onnxruntime.InferenceSession(onnx if isinstance(onnx, bytes) else str(onnx), options,
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = {}
    for n in BATCHES:
        x = {name: np.random.default_rng(0).random((n, *input_shape), dtype=np.float32)}
        out[_key(n)] = median_ms(lambda: session.run(None, x), seconds)
    return out


def torch_latency(model: nn.Module, input_shape: tuple[int, int, int], device: torch.device,
                  seconds: float = SECONDS) -> dict[str, float]:
    """Median milliseconds per call of `model` on `device` (a GPU) at each of BATCHES, in eval mode."""
    was_training = model.training
    model.eval()
    out = {}
    try:
        with torch.inference_mode():
            for n in BATCHES:
                x = torch.rand(n, *input_shape, device=device)

                def call() -> None:
                    model(x)
                    torch.cuda.synchronize(device)

                out[_key(n, "gpu_")] = median_ms(call, seconds)
    finally:
        model.train(was_training)
    return out


def median_ms(call: Callable[[], object], seconds: float = SECONDS) -> float:
    """The median milliseconds of `call()` over MIN_RUNS to MAX_RUNS timed runs, after WARMUP untimed ones;
    timing stops once `seconds` have gone by (after MIN_RUNS)."""
    for _ in range(WARMUP):
        call()
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or time.perf_counter() < stop):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 4)


def _key(n: int, prefix: str = "") -> str:
    return f"{prefix}latency_ms" if n == 1 else f"{prefix}latency_ms_{n}"
