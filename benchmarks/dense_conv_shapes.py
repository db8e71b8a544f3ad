"""XLA:CPU's 3x3 convolution against the same products as one GEMM (im2col), at ResNet-50's shapes.

Forward, input gradient and kernel gradient of each 3x3 layer of ResNet-50's four stages at 50 and
96 px (batch 64, float32, 'SAME'), jitted, median of 5 calls after one: `lax.conv_general_dilated`
(what `nnx.Conv` runs) against `mobilenets.cpu.convolutions.dense_conv_as_gemm`. It is the
measurement behind the `cpu` path's choice of the GEMM for maps smaller than the kernel
(benchmarks/RESULTS.md).

    python benchmarks/dense_conv_shapes.py
"""

from __future__ import annotations

import os
import pathlib
import sys

BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import harness  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mobilenets.cpu.convolutions import dense_conv, dense_conv_as_gemm  # noqa: E402

# (input side, channels) of the 3x3 layers of ResNet-50's stages at 50 and 96 px.
STAGES = {
    50: ((13, 64), (7, 128), (4, 256), (2, 512)),
    96: ((24, 64), (12, 128), (6, 256), (3, 512)),
}
BATCH = 64


def median_ms(function, *args, repeats: int = 5) -> float:
    """Median ms of `function(*args)` over `repeats` calls after one."""
    timing = harness.median_step_seconds(
        lambda _: function(*args), synchronize=jax.block_until_ready, warmup=1, steps=repeats
    )
    return timing.median_s * 1e3


def passes(conv):
    """Jitted forward, input gradient and kernel gradient of `conv(x, kernel)`."""
    return (
        jax.jit(conv),
        jax.jit(lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0]),
        jax.jit(lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0]),
    )


def main() -> None:
    harness.argument_parser(__doc__).parse_args()  # --help; no options
    print(f"batch {BATCH}, float32, 3x3 'SAME', stride 1, ms (median of 5); GFLOP/s of the forward")
    header = f"{'px':>3} {'map':>9} {'form':<6}{'forward':>9}{'input grad':>12}"
    print(f"{header}{'kernel grad':>13}{'GFLOP/s':>9}")
    for px, stages in STAGES.items():
        for side, channels in stages:
            keys = jax.random.split(jax.random.key(side), 2)
            x = jax.random.normal(keys[0], (BATCH, side, side, channels))
            kernel = jax.random.normal(keys[1], (3, 3, channels, channels)) * 0.01
            grad = jnp.ones_like(x)
            flops = 2 * BATCH * side * side * channels * channels * 9
            for form, conv in (("xla", dense_conv), ("gemm", dense_conv_as_gemm)):
                forward, input_grad, kernel_grad = passes(lambda x, k, conv=conv: conv(x, k, 1))
                times = (
                    median_ms(forward, x, kernel),
                    median_ms(input_grad, x, kernel, grad),
                    median_ms(kernel_grad, x, kernel, grad),
                )
                print(
                    f"{px:>3} {f'{side}x{side}x{channels}':>9} {form:<6}{times[0]:>9.1f}"
                    f"{times[1]:>12.1f}{times[2]:>13.1f}{flops / times[0] / 1e6:>9.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
