"""Keeps XLA:CPU's per-step scratch memory mapped between steps (Linux, glibc).

XLA:CPU allocates the temporary buffer of each execution with `posix_memalign` from one of its
worker threads: 265 MiB for a MobileNetV1 train step at 50 px with batch 64. glibc serves a
request that large from a thread's arena with a fresh `mmap` and returns it with `munmap` when it
is freed, so every train step page-faults the whole buffer back in: measured on a 2-core machine,
69,000 minor page faults and 120-140 ms of kernel time per step, 238 ms per step against 183 ms
without them (`benchmarks/bench_jax.py` reports the faults per step). At 96 px the step faults
about 200,000 pages (770 MiB) each time.

`keep_scratch_memory_mapped` sets three `mallopt` options: one arena (every thread allocates from
the main heap, which grows with `brk` and can hold a chunk of any size; a thread arena can not),
no `mmap` for large chunks, and no trimming of the heap's top, so the freed buffer is reused by the
next step instead of being unmapped. The costs: the heap never shrinks and fragments, so the
process holds more resident memory (MobileNetV1 at 96 px, batch 64: 4.5 GiB instead of 1.6 GiB;
the heap grows during the first ~20 steps, then no step faults a page); threads that allocate
concurrently share one lock; glibc's `_int_malloc` takes 5-10% of the CPU time (XLA's YNNPACK
kernels allocate scratch tiles). `config.keep_scratch_memory_mapped = False` keeps glibc's
defaults.

Threads keep the arena they were given at their first allocation, and JAX's CPU client starts its
worker threads when the first backend is initialised: the function must run before that (first
thing in a program's `main`). It does nothing elsewhere than on glibc, when the run will not use
the CPU backend (an accelerator plugin is installed and `JAX_PLATFORMS` does not put `cpu` first:
there the step's scratch memory is device memory), or when a backend is already initialised.
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
_M_ARENA_MAX = -8
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
    """Applies the glibc settings described in the module docstring; True if they were applied."""
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
        for option, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _NEVER_TRIM),
        )
    )
    if not applied:
        logging.warning("glibc refused a mallopt setting: XLA:CPU scratch memory may be remapped")
    return applied
