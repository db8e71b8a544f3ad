"""The CPU path (mobilenets/cpu) computes what the reference computes: values and gradients.

Each operation runs in float32 with the native kernels on and off (`portable`), and is compared
with the reference formulation evaluated in float64; the allowed difference is the float32
rounding bound of the sums involved (`references.float32_sum_bound`, from the same computation
on absolute values), or, for BatchNorm, the float32 error of the reference formulation itself
measured in the test. Whole networks are compared in float64, where rounding is 2^-53.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mobilenets
from mobilenets import cpu
from mobilenets.cpu import batch_norm, convolutions, kernels
from mobilenets.layers import ConvBN, relu6
from tests.references import float32_sum_bound


def unit_options(seed: int = 0) -> dict:
    """ConvBN's keyword options, with a fresh random stream (so equal seeds give equal layers)."""
    return dict(bn_momentum=0.9, bn_epsilon=1e-3, rngs=nnx.Rngs(seed))


@pytest.fixture(params=["native", "portable"])
def kernel_mode(request, monkeypatch):
    """Runs a test with the native CPU kernels (skipped where they do not build) and without."""
    if request.param == "native":
        if not kernels.load():
            pytest.skip("native CPU kernels unavailable (no C++ compiler, or turned off)")
    else:
        monkeypatch.setattr(kernels, "load", lambda: False)
    return request.param


def reference_vjp(function, args, cotangent):
    """(value, gradients) of `function` at `args` in float64, and the same on absolute values.

    For a function linear in each argument (a convolution) the absolute-value evaluation gives,
    element by element, the sum of the absolute values of the products each result sums.
    """
    with jax.enable_x64(True):
        as64 = lambda arrays: [jnp.asarray(np.asarray(a, np.float64)) for a in arrays]
        value, vjp = jax.vjp(function, *as64(args))
        grads = vjp(*as64([cotangent]))
        abs_value, abs_vjp = jax.vjp(function, *as64([np.abs(a) for a in args]))
        abs_grads = abs_vjp(*as64([np.abs(cotangent)]))
        to_numpy = lambda arrays: [np.asarray(a) for a in arrays]
        return to_numpy([value, *grads]), to_numpy([abs_value, *abs_grads])


def assert_within_float32_bound(got, expected, abs_sums, num_terms, names):
    for name, g, e, a in zip(names, got, expected, abs_sums):
        error = np.abs(np.asarray(g, np.float64) - e)
        bound = float32_sum_bound(a, num_terms)
        assert np.all(error <= bound), f"{name}: max excess {np.max(error - bound)}"


def assert_conv_equals_lax(conv, x, kernel, stride: int, groups: int, num_terms: int) -> None:
    """`conv(x, kernel)` and its gradients against the lax convolution in float64."""
    rng = np.random.default_rng(x.size)
    out_shape = jax.eval_shape(lambda: lax_conv(x, kernel, stride, groups)).shape
    cotangent = rng.normal(size=out_shape).astype(np.float32)
    value, vjp = jax.vjp(conv, jnp.asarray(x), jnp.asarray(kernel))
    got = [value, *vjp(jnp.asarray(cotangent))]
    expected, abs_sums = reference_vjp(
        lambda x, k: lax_conv(x, k, stride, groups), [x, kernel], cotangent
    )
    assert_within_float32_bound(got, expected, abs_sums, num_terms, ["y", "dx", "dkernel"])


def lax_conv(x, kernel, stride, groups):
    """The reference convolution: what `nnx.Conv(padding='SAME')` runs."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


@pytest.mark.parametrize(
    "shape, kernel_size, stride",
    [
        ((2, 9, 10, 6), 3, 1),
        ((2, 9, 10, 6), 3, 2),
        ((3, 8, 8, 5), 2, 1),
        ((16, 12, 12, 24), 3, 2),
        ((4, 9, 8, 8), 5, 2),  # MobileNetV3's 5x5 kernels
        ((4, 7, 7, 8), 5, 1),
    ],
)
def test_shifted_depthwise_values_and_gradients_equal_the_grouped_convolution(
    kernel_mode, shape, kernel_size, stride
):
    rng = np.random.default_rng(sum(shape) + stride)
    channels = shape[-1]
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(kernel_size, kernel_size, 1, channels)).astype(np.float32)
    out_h, out_w = (-(-size // stride) for size in shape[1:3])
    # The kernel gradient sums over every image and output pixel: the most terms.
    assert_conv_equals_lax(
        lambda x, k: convolutions.depthwise_conv_shifted(x, k, stride),
        x,
        kernel,
        stride,
        channels,
        num_terms=shape[0] * out_h * out_w,
    )


def test_native_depthwise_gradients_are_repeatable():
    if not kernels.load():
        pytest.skip("native CPU kernels unavailable")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(16, 12, 12, 24)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 24)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(16, 6, 6, 24)), jnp.float32)
    grads = jax.jit(
        jax.grad(
            lambda k, x: jnp.sum(convolutions.depthwise_conv_shifted(x, k, 2) * cotangent),
            argnums=(0, 1),
        )
    )
    for first, second in zip(grads(kernel, x), grads(kernel, x)):
        np.testing.assert_array_equal(first, second)  # fixed batch slices: same sums every call


def test_pointwise_gemm_equals_the_1x1_convolution():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    kernel = rng.normal(size=(1, 1, 7, 3)).astype(np.float32)
    assert_conv_equals_lax(convolutions.pointwise_conv, x, kernel, 1, 1, num_terms=2 * 5 * 6)


@pytest.mark.parametrize("shape, stride", [((6, 11, 10, 3), 2), ((3, 9, 9, 3), 1)])
def test_stem_convolution_values_and_gradients_equal_the_convolution(kernel_mode, shape, stride):
    rng = np.random.default_rng(5)
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 16)).astype(np.float32)
    out_h, out_w = (-(-size // stride) for size in shape[1:3])
    assert_conv_equals_lax(
        lambda x, k: convolutions.dense_conv_few_inputs(x, k, stride),
        x,
        kernel,
        stride,
        1,
        num_terms=max(27, shape[0] * out_h * out_w),
    )


@pytest.mark.parametrize(
    "shape, stride",
    [((4, 2, 2, 8), 1), ((3, 2, 3, 6), 1), ((2, 1, 1, 5), 1), ((2, 3, 3, 5), 2), ((2, 7, 6, 5), 2)],
)
def test_convolution_as_one_gemm_equals_the_convolution(shape, stride):
    rng = np.random.default_rng(sum(shape) + stride)
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(3, 3, shape[-1], 7)).astype(np.float32)
    out_h, out_w = (-(-size // stride) for size in shape[1:3])
    assert_conv_equals_lax(
        lambda x, k: convolutions.dense_conv_as_gemm(x, k, stride),
        x,
        kernel,
        stride,
        1,
        num_terms=max(9 * 7, 9 * shape[-1], shape[0] * out_h * out_w),
    )


def test_only_a_map_smaller_than_its_kernel_takes_the_gemm():
    unit = ConvBN(8, 6, kernel_size=3, implementation="cpu", **unit_options(3))
    for size, expected in ((2, "dot_general"), (3, "conv_general_dilated")):
        x = jnp.zeros((4, size, size, 8), jnp.float32)
        ops = str(jax.make_jaxpr(lambda x: cpu.convolve(unit, x))(x))
        assert expected in ops and ("conv_general_dilated" in ops) == (size == 3), size


@pytest.mark.parametrize("apply_relu6", [False, True])
def test_batch_norm_in_training_matches_autodiff_of_nnx_batchnorm(kernel_mode, apply_relu6):
    rng = np.random.default_rng(9)
    # An offset mean and a wide spread: ReLU6 clips at both ends, fast variance is exercised.
    x = (rng.normal(size=(3000, 5)) * 3.0 + 2.0).astype(np.float32)
    scale = rng.uniform(1.0, 4.0, 5).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    cotangent = rng.normal(size=(3000, 5)).astype(np.float32)

    def reference(x, scale, bias):
        norm = nnx.BatchNorm(
            5,
            epsilon=1e-3,
            use_running_average=False,
            dtype=x.dtype,
            param_dtype=x.dtype,
            rngs=nnx.Rngs(0),
        )
        norm.scale[...], norm.bias[...] = scale, bias
        y = norm(x)
        return relu6(y) if apply_relu6 else y

    def custom(x, scale, bias):
        return batch_norm.batch_norm_in_training(x, scale, bias, 1e-3, apply_relu6)[0]

    args = [jnp.asarray(a) for a in (x, scale, bias)]
    y32, vjp32 = jax.vjp(reference, *args)
    reference32 = [y32, *vjp32(jnp.asarray(cotangent))]
    y, vjp = jax.vjp(custom, *args)
    got = [y, *vjp(jnp.asarray(cotangent))]
    exact, _ = reference_vjp(reference, [x, scale, bias], cotangent)
    if apply_relu6:
        assert 0 < np.mean(np.asarray(y) == 0.0) < 0.9 and np.any(np.asarray(y) == 6.0)
    # The float32 error of the reference formulation, measured here, bounds that of the custom
    # one up to a factor: both round the same sums and products, in other orders.
    for name, g, r, e in zip(("y", "dx", "dscale", "dbias"), got, reference32, exact):
        null = np.max(np.abs(np.asarray(r, np.float64) - e))
        error = np.max(np.abs(np.asarray(g, np.float64) - e))
        scale_of_values = np.max(np.abs(e))
        assert error <= 8 * null + 4 * 2.0**-24 * scale_of_values, (name, error, null)
    _, mean, var = batch_norm.batch_norm_in_training(*args, 1e-3, apply_relu6)
    x64 = x.astype(np.float64)
    np.testing.assert_array_less(
        np.abs(mean - x64.mean(0)), float32_sum_bound(np.abs(x64).mean(0), 3000)
    )
    # E[x^2] - E[x]^2 cancels: the bound is that of E[x^2] (and of E[x]^2).
    np.testing.assert_array_less(
        np.abs(var - x64.var(0)), 3 * float32_sum_bound((x64 * x64).mean(0), 3000)
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_shifted_depthwise_gradients_in_bfloat16_keep_input_dtypes(stride):
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(2, 8, 7, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32)

    def loss(x, kernel, conv):
        out = conv(x, kernel)
        assert out.dtype == jnp.float32  # accumulated in float32 whatever the input dtype
        return jnp.sum(out * out)

    grouped = lambda x, k: lax_conv(x, k, stride, 4).astype(jnp.float32)
    shifted = lambda x, k: convolutions.depthwise_conv_shifted(x, k, stride)
    reference = jax.grad(loss, argnums=(0, 1))(x, kernel, grouped)
    grads = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.bfloat16), kernel, shifted)
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32
    for got, want in zip(grads, reference):
        got, want = np.asarray(got, np.float32), np.asarray(want)
        # bfloat16 inputs keep 8 significant bits (relative rounding 2^-9 per input).
        assert np.linalg.norm(got - want) < 0.02 * np.linalg.norm(want)


@pytest.mark.parametrize(
    "name, alpha",
    [
        ("mobilenet_v1", 0.25),
        ("mobilenet_v2", 0.25),
        # The units V1 and V2 lack, each compiled twice (about half a minute each on 2 cores),
        # so with the heavy tests: hard-swish units (nnx.BatchNorm), 5x5 depthwise and
        # squeeze-and-excitation (V3); convolution biases, the explicitly padded stem and max
        # pooling (ResNet-50). The CPU path's kernels, 5x5 depthwise included, are checked above.
        pytest.param("mobilenet_v3_small", 0.25, marks=pytest.mark.heavy),
        pytest.param("resnet50", 1.0, marks=pytest.mark.heavy),
    ],
)
def test_whole_networks_compute_the_same_in_both_implementations(name, alpha):
    """Loss, gradients and batch statistics of a train-mode step;
    eval-mode logits.

    In float64 (where the native kernels stand aside) the two formulations may differ only by
    rounding at 2^-53 ~ 1e-16, amplified through the network; 1e-9 leaves orders of magnitude
    for that, while any difference of formulation (a wrong tap, mask or statistic) is far larger.
    nnx.BatchNorm stores its running statistics in float32, so those are compared at float32's
    rounding, and eval mode runs both formulations on the same statistics.
    """
    with jax.enable_x64(True):
        images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)))
        labels = jnp.array([0, 1, 1, 0])
        models = {
            implementation: mobilenets.create(
                name,
                alpha=alpha,
                dropout_rate=0.0,
                dtype=jnp.float64,
                param_dtype=jnp.float64,
                implementation=implementation,
                rngs=nnx.Rngs(0),
            )
            for implementation in ("reference", "cpu")
        }

        @nnx.jit
        def train_step(model):
            def loss_fn(model):
                log_p = jax.nn.log_softmax(model(images))
                return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], 1))

            return nnx.value_and_grad(loss_fn)(model)

        flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
        results = {}
        for implementation, model in models.items():
            model.train()
            loss, grads = train_step(model)
            results[implementation] = (loss, grads, nnx.state(model, nnx.BatchStat))
        (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = results.values()
        assert abs(loss_a - loss_b) <= 1e-9 * abs(loss_a)
        a, b = flat(nnx.state(grads_a, nnx.Param)), flat(nnx.state(grads_b, nnx.Param))
        assert np.linalg.norm(a - b) <= 1e-9 * np.linalg.norm(a)
        a, b = flat(stats_a), flat(stats_b)  # each rounded to float32: 2^-24 relative, at most
        assert np.linalg.norm(a - b) <= 2.0**-22 * np.linalg.norm(a)

        nnx.update(models["cpu"], stats_a)
        logits = {}
        for implementation, model in models.items():
            model.eval()
            logits[implementation] = np.asarray(nnx.jit(lambda m: m(images))(model))
        a, b = logits.values()
        assert np.linalg.norm(a - b) <= 1e-9 * np.linalg.norm(a)


def test_the_cpu_path_is_registered_as_an_implementation():
    from mobilenets import layers

    assert layers.IMPLEMENTATIONS["cpu"] is cpu.conv_bn
    unit = ConvBN(4, 4, kernel_size=3, groups=4, implementation="cpu", **unit_options())
    assert unit.implementation == "cpu" and unit.kind == "depthwise"
