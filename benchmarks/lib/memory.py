"""Peak memory of one step on CPU, from the profiler's allocation events."""

from __future__ import annotations

from collections.abc import Callable

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def cpu_peak_bytes(step: Callable[[], None]) -> int:
    """Peak of live tensor bytes during ``step()``, over what was live just before it.

    The profiler logs every allocation and free of PyTorch's CPU allocator with its size; their
    running sum from the start of the step is the step's extra live memory, and its maximum the
    step's peak above the model's resting footprint (weights, optimizer state). Unlike RSS this
    does not depend on what glibc keeps after earlier, larger steps, nor on import-time peaks,
    and it is deterministic, so one step per point suffices. It does not see memory that oneDNN or
    the BLAS library allocate outside PyTorch's allocator (scratch buffers, alike for all methods).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
