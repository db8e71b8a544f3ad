"""Native CPU kernels, called from jitted code through XLA's FFI (`jax.ffi`).

XLA:CPU writes a depthwise convolution's *kernel* gradient as k * k multiply-reduce passes over
the activations (one per tap), bandwidth-bound, 17-25% of a MobileNet train step on a 2-core
CPU. `cpu_kernels.cc` does it in one pass: 2-9x faster per layer (benchmarks/RESULTS.md).

The kernel is compiled on first use with the host's C++ compiler (`$CXX`, else `c++`/`g++`,
about 2 s) against the FFI headers that jaxlib ships, for this CPU (`-march=native`), into
`$MOBILENETS_CACHE_DIR` (default `~/.cache/mobilenets`), named by a hash of everything that
went into it. Without a compiler, or with `MOBILENETS_CPU_KERNELS=0`, the code falls back to the
pure-XLA formulation (same result to float rounding; a warning says so once). Nothing here is
used on GPU/TPU: `lax.platform_dependent` lowers the kernel only for the CPU backend.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
DEPTHWISE_KERNEL_GRAD = "mobilenets_depthwise_kernel_grad"
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")

log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether the native kernels are wanted (`MOBILENETS_CPU_KERNELS=0` turns them off)."""
    return os.environ.get("MOBILENETS_CPU_KERNELS", "1") != "0"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What `-march=native` depends on: a cache shared by different CPUs must not mix them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    include_dir = jax.ffi.include_dir()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256(
        "\0".join(
            [SOURCE.read_text(), include_dir, jax.__version__, version, _cpu_signature(), *_FLAGS]
        ).encode()
    ).hexdigest()[:16]
    cache_dir = Path(
        os.environ.get("MOBILENETS_CACHE_DIR") or Path.home() / ".cache" / "mobilenets"
    )
    library = cache_dir / f"cpu_kernels-{key}.so"
    if library.exists():
        return library
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target, then rename: concurrent processes never load a half-written file.
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        partial = Path(scratch) / library.name
        result = subprocess.run(
            [compiler, *_FLAGS, f"-I{include_dir}", str(SOURCE), "-o", str(partial)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed:\n{result.stderr[-2000:]}")
        os.replace(partial, library)
    return library


@functools.cache
def load() -> bool:
    """Builds (once per machine) and registers the kernels; False where they are unavailable."""
    if not enabled():
        return False
    compiler = _compiler()
    if compiler is None:
        log.warning("no C++ compiler found: using XLA's slower depthwise kernel gradient on CPU")
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        log.warning("native CPU kernels unavailable (%s); using XLA's formulation", error)
        return False
    jax.ffi.register_ffi_target(
        DEPTHWISE_KERNEL_GRAD, jax.ffi.pycapsule(library.DepthwiseKernelGrad), platform="cpu"
    )
    return True


def depthwise_kernel_grad(
    x: jax.Array, grad_out: jax.Array, kernel_size: int, stride: int, pad_top: int, pad_left: int
) -> jax.Array:
    """sum_{n,i,j} grad_out[n,i,j,c] * x[n, s*i + a - pad_top, s*j + b - pad_left, c].

    x: [N, H, W, C] float32, grad_out: [N, OH, OW, C] float32 -> [k, k, 1, C] float32. Call only
    after `load()` returned True, and only on the CPU backend.
    """
    channels = x.shape[-1]
    call = jax.ffi.ffi_call(
        DEPTHWISE_KERNEL_GRAD,
        jax.ShapeDtypeStruct((kernel_size, kernel_size, 1, channels), jnp.float32),
        vmap_method="sequential",
    )
    return call(
        x.astype(jnp.float32),
        grad_out.astype(jnp.float32),
        stride=np.int64(stride),
        pad_top=np.int64(pad_top),
        pad_left=np.int64(pad_left),
    )
