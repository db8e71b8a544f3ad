"""Keeps XLA:CPU's per-step scratch memory mapped between steps (Linux, glibc).

XLA:CPU allocates the temporary buffer of each execution with `posix_memalign`: hundreds of MiB
for a MobileNet train step at batch 64. With JAX's default asynchronous CPU dispatch that happens
on one of XLA's worker threads, whose glibc arena can not hold a chunk that large (a thread
arena's heaps are at most 64 MiB): glibc maps it with a fresh `mmap` and `munmap`s it when it is
freed, so every train step page-faults the whole buffer back in (`benchmarks/bench_jax.py`
reports faults per step).

`keep_scratch_memory_mapped` makes the buffer come from the main heap and stay there:

* synchronous CPU dispatch (`jax_cpu_enable_async_dispatch = False`): the calling thread runs the
  step and allocates its buffer, from the main arena, whose heap grows with `brk` to any size;
* `mallopt(M_MMAP_MAX, 0)`: no chunk is served by `mmap` while `brk` can serve it;
* `mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`: the heap's top is never returned to the system, so the
  next step reuses the freed buffer.

The worker threads keep their own arenas for their small, frequent allocations (XLA's YNNPACK
kernels allocate scratch tiles on every call). The cost of synchronous dispatch: the host waits
for each step before preparing the next batch, which on a CPU takes well under a millisecond. A
single arena for all threads (`M_ARENA_MAX = 1`) also removes the faults, but costs CPU time in
`_int_malloc` and resident memory. benchmarks/RESULTS.md, section "Where the CPU time goes, and
what was tried" (the page faults), has the figures: faults and kernel time per step before, step
times and resident memory after, and the single arena's costs.
`config.keep_scratch_memory_mapped = False` keeps JAX's and glibc's defaults.

JAX reads the dispatch option when it creates its CPU client, so the function must run before the
first backend is initialised (`trainer.startup.start` calls it). Multi-process runs do not use it:
with synchronous dispatch, a peer process killed mid-run once aborted the survivor (a fatal
signal) instead of raising the `JaxRuntimeError` that `main.py` turns into a clear message. It
does nothing elsewhere than on glibc, when the run will not use the CPU backend (an accelerator
plugin is installed and `JAX_PLATFORMS` does not put `cpu` first: there the step's scratch memory
is device memory), or when a backend is already initialised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import pkgutil
import platform

import jax
from absl import logging

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def cpu_backend_expected() -> bool:
    """Whether JAX will compute on the CPU, decided without initialising a backend."""
    platforms = jax.config.jax_platforms
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if list(importlib.metadata.entry_points(group="jax_plugins")):
        return False
    try:
        import jax_plugins
    except ImportError:
        return True
    return not any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def _backend_initialised() -> bool:
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def keep_scratch_memory_mapped() -> bool:
    """Sets synchronous CPU dispatch and the two glibc options above; True if applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if not cpu_backend_expected():
        return False
    if _backend_initialised():
        logging.warning(
            "host_memory.keep_scratch_memory_mapped() called after JAX started its backend: "
            "skipped, it must run before the first JAX operation."
        )
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    applied = all(
        libc.mallopt(option, value) == 1
        for option, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    )
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    if not applied:
        logging.warning("glibc refused a mallopt setting: XLA:CPU scratch memory may be remapped")
    return applied
