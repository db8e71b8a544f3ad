"""Native CPU kernels for a MobileNet train step, called through XLA's FFI (`jax.ffi`).

XLA:CPU runs every reduction as its own pass over the activations: a depthwise convolution's
*kernel* gradient is k * k such multiply-reduce passes (one per tap), a large share of a MobileNet
train step on the CPU; BatchNorm's statistics and gradient sums are two more each, and its
backward pass writes the ReLU6-masked gradient out for them. And XLA fuses the depthwise
convolution's nine shifted taps, recomputed, into every consumer of its output. `kernels.cc`
has the depthwise convolution with both gradients, BatchNorm's statistics and backward pass, and
the RGB stem convolution, each in one or two passes. benchmarks/RESULTS.md, sections "What this
session changed: native CPU kernels, measured side by side" and "Where the CPU time goes, and
what was tried", has the figures: each kernel against the XLA it replaces, and the train step
against the same model in pure XLA. `on_cpu` picks the native kernel when lowering for the CPU,
the portable jnp formulation elsewhere.

The library is compiled on first use with the host's C++ compiler (`$CXX`, else `c++`/`g++`,
about 2 s) against the FFI headers that jaxlib ships, for this CPU (`-march=native`), into
`$MOBILENETS_CACHE_DIR` (default `~/.cache/mobilenets`), named by a hash of everything that
went into it. Without a compiler, or with `MOBILENETS_CPU_KERNELS=0`, the code falls back to the
pure-XLA formulation (same result to float rounding; a warning says so once). Nothing here is
used on GPU/TPU: `lax.platform_dependent` lowers the kernels only for the CPU backend.
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
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("kernels.cc")
# name of the XLA FFI target -> symbol of its handler in the library
TARGETS = {
    "mobilenets_depthwise_conv": "DepthwiseConv",
    "mobilenets_depthwise_conv_transpose": "DepthwiseConvTranspose",
    "mobilenets_depthwise_kernel_grad": "DepthwiseKernelGrad",
    "mobilenets_small_input_conv": "SmallInputConv",
    "mobilenets_small_input_conv_kernel_grad": "SmallInputConvKernelGrad",
    "mobilenets_moment_sums": "MomentSums",
    "mobilenets_batch_norm_backward": "BatchNormBackward",
}
# -ffp-contract=off: no fused multiply-adds, so the ReLU6 mask recomputed here from x rounds
# exactly as XLA's forward pass did.
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-w")

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
        log.warning(
            "native CPU kernels unavailable (no C++ compiler found): using the pure-XLA "
            "formulation, about 1.2-1.4x slower per train step"
        )
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        log.warning("native CPU kernels unavailable (%s); using XLA's formulation", error)
        return False
    for target, symbol in TARGETS.items():
        handler = jax.ffi.pycapsule(getattr(library, symbol))
        jax.ffi.register_ffi_target(target, handler, platform="cpu")
    return True


def active() -> bool:
    """Whether `on_cpu` runs the native kernels here (for float32 arrays)."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1 and load()


def on_cpu(native: Callable, portable: Callable, *args):
    """`native(*args)` when lowering for the CPU with the kernels loaded, else `portable(*args)`.

    Both must compute the same thing; `portable` is plain jnp and serves every other backend and
    every dtype but float32 (the native kernels are float32 only). Native kernels are used only
    where the CPU is the one device: XLA's SPMD partitioner can not split an FFI call, so on
    several (virtual or real) CPU devices it would gather every operand onto each of them.
    """
    if any(jnp.result_type(arg) != jnp.float32 for arg in args) or not active():
        return portable(*args)
    return jax.lax.platform_dependent(*args, cpu=native, default=portable)


def _conv_call(
    target: str,
    operand: jax.Array,
    kernel: jax.Array,
    result_shape,
    stride: int,
    pad_top: int,
    pad_left: int,
) -> jax.Array:
    call = jax.ffi.ffi_call(
        target, jax.ShapeDtypeStruct(result_shape, jnp.float32), vmap_method="sequential"
    )
    return call(
        operand,
        kernel,
        stride=np.int64(stride),
        pad_top=np.int64(pad_top),
        pad_left=np.int64(pad_left),
    )


def depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    out_hw: tuple[int, int],
    stride: int,
    pad_top: int,
    pad_left: int,
) -> jax.Array:
    """out[n,i,j,c] = sum_{a,b} x[n, s*i + a - pad_top, s*j + b - pad_left, c] * kernel[a,b,0,c].

    x: [N, H, W, C], kernel: [k, k, 1, C] -> [N, *out_hw, C], zero outside the image.
    """
    shape = (x.shape[0], *out_hw, x.shape[3])
    return _conv_call("mobilenets_depthwise_conv", x, kernel, shape, stride, pad_top, pad_left)


def depthwise_conv_transpose(
    grad_out: jax.Array,
    kernel: jax.Array,
    in_hw: tuple[int, int],
    stride: int,
    pad_top: int,
    pad_left: int,
) -> jax.Array:
    """The input gradient of `depthwise_conv`: [N, OH, OW, C] -> [N, *in_hw, C]."""
    shape = (grad_out.shape[0], *in_hw, grad_out.shape[3])
    return _conv_call(
        "mobilenets_depthwise_conv_transpose", grad_out, kernel, shape, stride, pad_top, pad_left
    )


def depthwise_kernel_grad(
    x: jax.Array, grad_out: jax.Array, kernel_size: int, stride: int, pad_top: int, pad_left: int
) -> jax.Array:
    """sum_{n,i,j} grad_out[n,i,j,c] * x[n, s*i + a - pad_top, s*j + b - pad_left, c].

    x: [N, H, W, C], grad_out: [N, OH, OW, C] -> [k, k, 1, C], all float32. Like the functions
    below, only for the CPU backend after `load()` returned True: use it through `on_cpu`.
    """
    shape = (kernel_size, kernel_size, 1, x.shape[-1])
    return _conv_call(
        "mobilenets_depthwise_kernel_grad", x, grad_out, shape, stride, pad_top, pad_left
    )


def small_input_conv(
    x: jax.Array,
    kernel: jax.Array,
    out_hw: tuple[int, int],
    stride: int,
    pad_top: int,
    pad_left: int,
) -> jax.Array:
    """A dense convolution for few input channels (the RGB stem): [N, H, W, Ci] x [k, k, Ci, Co]."""
    shape = (x.shape[0], *out_hw, kernel.shape[3])
    return _conv_call("mobilenets_small_input_conv", x, kernel, shape, stride, pad_top, pad_left)


def small_input_conv_kernel_grad(
    x: jax.Array, grad_out: jax.Array, kernel_size: int, stride: int, pad_top: int, pad_left: int
) -> jax.Array:
    """The kernel gradient of `small_input_conv`: [k, k, Ci, Co]."""
    shape = (kernel_size, kernel_size, x.shape[3], grad_out.shape[3])
    return _conv_call(
        "mobilenets_small_input_conv_kernel_grad", x, grad_out, shape, stride, pad_top, pad_left
    )


def _per_channel(x: jax.Array, count: int):
    return (jax.ShapeDtypeStruct(x.shape[-1:], jnp.float32),) * count


def moment_sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum(x, 0), sum(x * x, 0)) of a [rows, C] float32 array, in one pass."""
    call = jax.ffi.ffi_call("mobilenets_moment_sums", _per_channel(x, 2), vmap_method="sequential")
    return tuple(call(x))


def batch_norm_backward(
    grad: jax.Array,
    x: jax.Array,
    mean: jax.Array,
    inv_std: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    *,
    relu6: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dx, dscale, dbias) of `layers.batch_norm_in_training`, its formulas, in two passes.

    grad, x: [rows, C]; mean, inv_std, scale, bias: [C]; all float32.
    """
    call = jax.ffi.ffi_call(
        "mobilenets_batch_norm_backward",
        (jax.ShapeDtypeStruct(x.shape, jnp.float32), *_per_channel(x, 2)),
        vmap_method="sequential",
    )
    return tuple(call(grad, x, mean, inv_std, scale, bias, relu6=relu6))
