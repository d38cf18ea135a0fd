"""Every device-specific torch call, in one small module: which CUDA device a process trains
on, and every stream, graph, synchronisation and memory figure bound to that device.

    device = devices.for_ray_gpu("GPU-5f0c...")    # Ray's GPU id -> torch.device on this node
    with devices.bound(device):                     # cuda:N is the current device in this block
        stream = devices.side_stream(device)
        with devices.capturing(graph, device, stream):
            ...
    devices.synchronize(device)
    devices.make_deterministic(device)              # a pinned loop: the same bits every run

Why one module: CUDA's "current device" is per host thread and starts at 0. A call that does
not name its device (a new stream, a graph capture, `synchronize()`, a memory counter) acts
on device 0, so an executor on cuda:3 would capture its graph on device 0's stream, wait on
device 0, and time nothing. Every such call here takes the device, and the round thread of
an executor runs inside `bound(device)`. A test reads the package to check that no other
module calls `torch.cuda` itself.

On a CPU every function is a no-op or the CPU answer, so the same code runs everywhere.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

from tunefm.errors import UserError

CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs to pick deterministic reductions (PyTorch's docs)


def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def cuda_available() -> bool:
    return torch.cuda.is_available()


def cuda_index(gpu_id: str, visible: str | None = None) -> int:
    """The torch index, in this process, of the GPU Ray calls `gpu_id` on this node.

    Ray names a node's GPUs as its CUDA_VISIBLE_DEVICES did when the node started (indices, or
    UUIDs such as `GPU-5f0c...`), and leaves that variable as it is for a process that asks
    for no GPU (an executor), so the id's place in this process's list is its index. Must run
    in the process that uses the device: the coordinator may sit on another node.
    `visible`: CUDA_VISIBLE_DEVICES as this process has it (default: read it)."""
    gpu_id = str(gpu_id).strip()
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:  # every GPU of the node visible, in Ray's order
        if gpu_id.isdigit():
            return int(gpu_id)
        for index in range(count()):
            if f"GPU-{torch.cuda.get_device_properties(index).uuid}" == gpu_id:
                return index
        raise UserError(f"GPU {gpu_id}: no GPU of this node has that UUID")
    names = [v.strip() for v in visible.split(",") if v.strip()]
    if gpu_id in names:
        return names.index(gpu_id)
    if not names:
        raise UserError(f"GPU {gpu_id}: this process sees no GPU (CUDA_VISIBLE_DEVICES is empty; with "
                        f"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 Ray hides GPUs from executors, which ask for none)")
    raise UserError(f"GPU {gpu_id} is not among this process's CUDA_VISIBLE_DEVICES ({visible})")


def for_ray_gpu(gpu_id: str | None) -> torch.device:
    """The device for a GPU id Ray gave (None: the CPU). A logical GPU, one a node declares without
    CUDA behind it, is the CPU too, as for a solo trial (`training_plan.trial_device`)."""
    if gpu_id in (None, "") or not cuda_available():
        return torch.device("cpu")
    return torch.device("cuda", cuda_index(gpu_id))


def bound(device: torch.device | str):
    """The block's CUDA calls go to `device` (the calling thread's current device); CPU: nothing."""
    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def synchronize(device: torch.device | str) -> None:
    """Wait for `device`'s queued work (every stream of that device); CPU: nothing."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_stream(device: torch.device) -> "torch.cuda.Stream":
    """A new stream on `device`, ordered after the work already queued on its current stream."""
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


def join_stream(stream, device: torch.device) -> None:
    """`device`'s current stream waits for `stream`."""
    torch.cuda.current_stream(device).wait_stream(stream)


def on_stream(stream):
    return torch.cuda.stream(stream)


def new_graph() -> "torch.cuda.CUDAGraph":
    return torch.cuda.CUDAGraph()


def capturing(graph, device: torch.device, stream):
    """Capture `graph` on `stream` of `device`. Thread-local capture: a Ray actor calls into an
    executor from other threads (join, leave, status), and under the default global mode any
    CUDA call they made during a capture would invalidate it."""
    return torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local")


def name(device: torch.device) -> str:
    """The device's model name (a CPU: the processor's)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def memory(device: torch.device) -> tuple[float, float]:
    """(free, total) bytes of `device`'s memory (creates this process's context on it)."""
    return torch.cuda.mem_get_info(device)


def empty_cache(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        with bound(device):
            torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> float:
    """Start a new peak-memory window on `device`; returns the bytes reserved now."""
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_reserved(device)


def peaks(device: torch.device) -> tuple[float, float]:
    """(max allocated, max reserved) bytes on `device` since `reset_peak`."""
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def make_deterministic(device: torch.device | str) -> None:
    """Deterministic kernels for a pinned loop on CUDA: cuDNN's deterministic convolutions, no
    autotuning, and PyTorch's deterministic implementations where an op has one (an op without
    one warns instead of failing a search). cuBLAS needs its workspace setting before its first
    call in the process, so an executor or trial calls this before it trains. CPU kernels here
    are deterministic already: nothing to do."""
    if torch.device(device).type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def timed(run, device: torch.device) -> float:
    """Seconds for run(), with the device's queued work finished on both sides."""
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


# What CUDA says when a context is lost for good: every later call in the process fails too
# (an illegal access, a device-side assert, an ECC error, the GPU fallen off the bus).
STICKY_CUDA_ERRORS = ("illegal memory access", "illegal instruction", "device-side assert", "misaligned address",
                      "uncorrectable ecc", "unspecified launch failure", "fallen off the bus",
                      "cuda error: unknown error", "context is destroyed")


def is_sticky_error(error: BaseException) -> bool:
    """Whether `error` leaves this process's CUDA context unusable (only a new process can use
    the GPU again), unlike an out-of-memory error or a bad input, after which it goes on."""
    text = str(error).lower()
    return any(sign in text for sign in STICKY_CUDA_ERRORS)

