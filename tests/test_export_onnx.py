"""ONNX export (jax2onnx) and its StableHLO fallback, run on real patches against JAX.

The ONNX tests need jax2onnx, which lives in its own venv (requirements-export.txt; .ci/run
creates it and runs this file there): elsewhere they skip. The StableHLO test needs only JAX.

Networks: V1, V2 and V3-Small built from their configs at alpha 0.25 (for speed), randomly
initialised, with BatchNorm statistics drawn away from their initial 0 / 1 (so that a swapped
mean and variance, or statistics left out, would show), written through the inference-weights
format and exported from it, as a user's would be.

Tolerance, from float32 arithmetic: P(IDC) is also computed in float64 (the same weights, the
preprocessing in float64), and the float32 JAX evaluation's distance from it, e32 = max |p32 -
p64| over the patches, measures what rounding in float32 does to this network on these patches.
onnxruntime runs the same operations in float32 in another order (other convolution algorithms,
fused multiply-adds, BatchNorm folded into the convolutions), so its error is of the same order:
it must lie within 4 * e32 + 8 unit roundoffs of the float64 value, and so within 5 * e32 + 8u
of JAX's float32 value. A wrong layer, layout or weight moves P(IDC) by orders of magnitude more.
"""

import importlib.util
import json
import pathlib
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import input_pipeline
from idc_inference import export_onnx
from idc_inference import weights as weights_lib
from input_pipeline.patches import load_patch
from tests.conftest import EMBEDDED_SAMPLE

HAVE_JAX2ONNX = importlib.util.find_spec("jax2onnx") is not None
needs_jax2onnx = pytest.mark.skipif(
    not HAVE_JAX2ONNX,
    reason="jax2onnx is not installed (the export venv: pip install -r requirements-export.txt)",
)
UNIT_ROUNDOFF32 = 2.0**-24
PATIENTS = ("12878", "16166")  # real patches, some cut short at the slide border (padded)
ALPHA = 0.25


def config_of(name: str, window: int = 1) -> ml_collections.ConfigDict:
    from configs import default  # noqa: PLC0415

    config = default.get_config()
    config.model.name = name
    config.data.window = window
    config.model.alpha = ALPHA
    config.compute_dtype = "float32"
    config.model.implementation = "reference"
    return default.finalize(config)


def random_weights(
    name: str,
    directory: pathlib.Path,
    patches: np.ndarray,
    *,
    tta: bool,
    window: int = 1,
    calibration: dict | None = None,
) -> pathlib.Path:
    """A randomly initialised network of the config as a weights file: BatchNorm statistics
    drawn away from 0 / 1, and the classifier scaled and shifted so that the logit difference
    over `patches` has median 0 and spread 2 (P(IDC) then spans most of (0, 1)). `window` and
    `calibration` (a record) as export_model.py would write them."""
    import mobilenets  # noqa: PLC0415

    config = config_of(name, window)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    model = mobilenets.create(
        name, **weights_lib.network_kwargs(config), rngs=nnx.Rngs(params=0, dropout=1)
    )
    tensors = weights_lib.network_tensors(model)
    for key, array in tensors.items():
        if key.endswith("/mean"):
            tensors[key] = (0.2 * rng.standard_normal(array.shape)).astype(array.dtype)
        elif key.endswith("/var"):
            tensors[key] = rng.uniform(0.5, 2.0, array.shape).astype(array.dtype)
    model = weights_lib.build_network(config, tensors)
    logits = jax.jit(lambda x: model(input_pipeline.preprocess(x, config.preprocess, False)))(
        patches
    )
    difference = np.asarray(logits[:, 1] - logits[:, 0], np.float64)
    scale = 2.0 / max(float(np.std(difference)), 1e-6)
    kernel, bias = "params/head/classifier/kernel", "params/head/classifier/bias"
    tensors[kernel] = (tensors[kernel] * scale).astype(np.float32)
    shifted = tensors[bias].astype(np.float64) * scale
    shifted[1] -= scale * float(np.median(difference))
    tensors[bias] = shifted.astype(np.float32)
    record = {
        "name": name,
        "model": name,
        "alpha": ALPHA,
        "image_size": config.preprocess.image_size,
        "step": 0,
        "checkpoint": "latest",
        "threshold": {"value": 0.5, "source": "random network"},
        "tta": tta,
        "trained_on": "nothing (random)",
        "config": config.to_dict(),
        "calibration": calibration,
    }
    path = directory / f"{name}.safetensors"
    weights_lib.write_weights(path, tensors, record)
    return path


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    files = sorted(f for p in PATIENTS for f in (EMBEDDED_SAMPLE / p).rglob("*.png"))
    return np.stack([load_patch(f).image for f in files])


def jax_p_idc(weights: weights_lib.InferenceWeights, images: np.ndarray, *, tta: bool):
    """P(IDC) as the project computes it: `input_pipeline.preprocess`, the network, softmax,
    averaged over the dihedral views (`input_pipeline.dihedral_view`)."""
    config = weights.config
    model = weights.network(implementation="reference", dtype=jnp.float32)
    views = range(8) if tta else (0,)

    @jax.jit
    def p_idc(images):
        total = 0.0
        for k in views:
            view = input_pipeline.dihedral_view(images, k)
            inputs = input_pipeline.preprocess(view, config.preprocess, train=False)
            total = total + jax.nn.softmax(model(inputs))[:, 1]
        return total / len(views)

    return np.asarray(p_idc(images))


def float64_p_idc(weights: weights_lib.InferenceWeights, images: np.ndarray, *, tta: bool):
    """The same in float64: preprocessing (resize included) and network."""
    config = weights.config
    size = config.preprocess.image_size
    with jax.enable_x64(True):
        model = weights.network(implementation="reference", dtype=jnp.float64)
        views = range(8) if tta else (0,)
        total = 0.0
        for k in views:
            x = input_pipeline.dihedral_view(jnp.asarray(images), k).astype(jnp.float64) / 255.0
            x = jax.image.resize(x, (len(x), size, size, 3), "bilinear", antialias=True)
            total = total + jax.nn.softmax(model(x * 2.0 - 1.0))[:, 1]
        return np.asarray(total / len(views))


CASES = [
    pytest.param("mobilenet_v1", False, id="mobilenet_v1"),
    pytest.param("mobilenet_v2", False, id="mobilenet_v2"),
    pytest.param("mobilenet_v3_small", False, id="mobilenet_v3_small"),
    pytest.param("mobilenet_v1", True, id="mobilenet_v1-tta"),  # the 8 views inside the graph
]


@needs_jax2onnx
@pytest.mark.parametrize(("name", "tta"), CASES)
def test_onnx_matches_jax_on_real_patches(name, tta, patches, tmp_path):
    weights_file = random_weights(name, tmp_path, patches, tta=tta)
    output = tmp_path / f"{name}.onnx"
    properties = export_onnx.export_onnx(weights_file, output)
    weights = weights_lib.read_weights(weights_file)

    got = export_onnx.run_onnx(output, patches)
    expected = jax_p_idc(weights, patches, tta=tta)
    exact = float64_p_idc(weights, patches, tta=tta)
    assert got.shape == expected.shape == (len(patches),) and got.dtype == np.float32
    # The network must tell these patches apart, or the comparison would prove little.
    assert np.ptp(exact) > 0.3
    e32 = float(np.max(np.abs(expected - exact)))
    ort_error = float(np.max(np.abs(got - exact)))
    print(
        f"{name}: e32 {e32:.2e}, onnxruntime vs float64 {ort_error:.2e}, vs JAX float32 "
        f"{np.max(np.abs(got - expected)):.2e}"
    )
    assert ort_error <= 4 * e32 + 8 * UNIT_ROUNDOFF32, (e32, ort_error)
    assert np.max(np.abs(got - expected)) <= 5 * e32 + 8 * UNIT_ROUNDOFF32
    # Any batch size: one patch alone gives its value in the batch (to float32 rounding).
    single = export_onnx.run_onnx(output, patches[:1])
    assert abs(single[0] - got[0]) <= 4 * e32 + 8 * UNIT_ROUNDOFF32
    assert properties["tta"] == ("8 dihedral views averaged" if tta else "one view")


@needs_jax2onnx
def test_onnx_metadata_says_layout_scale_and_output(patches, tmp_path):
    import onnx  # noqa: PLC0415

    weights_file = random_weights("mobilenet_v1", tmp_path, patches, tta=False)
    output = tmp_path / "v1.onnx"
    export_onnx.export_onnx(weights_file, output)
    model = onnx.load(str(output))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["input_layout"] == "NHWC" and meta["input_dtype"] == "uint8"
    assert "0-255" in meta["input_scale"] and meta["input_size"] == "50x50"
    assert meta["output"].startswith("p_idc: float32 [N]") and "P(IDC)" in meta["output"]
    assert "micrometres per pixel" in meta["input"] and "not diagnosis" in meta["intended_use"]
    assert float(meta["threshold"]) == 0.5
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert (graph_input.name, graph_output.name) == ("images", "p_idc")
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_value or d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    assert dims[1:] == [50, 50, 3] and isinstance(dims[0], str)  # any batch size


def test_stablehlo_fallback_matches_jax(patches, tmp_path):
    weights_file = random_weights("mobilenet_v1", tmp_path, patches, tta=False)
    output = tmp_path / "v1.stablehlo"
    export_onnx.export_stablehlo(weights_file, output)
    exported = jax.export.deserialize(bytearray(output.read_bytes()))
    got = np.asarray(exported.call(patches))
    weights = weights_lib.read_weights(weights_file)
    expected = jax_p_idc(weights, patches, tta=False)
    exact = float64_p_idc(weights, patches, tta=False)
    e32 = float(np.max(np.abs(expected - exact)))
    assert np.max(np.abs(got - exact)) <= 4 * e32 + 8 * UNIT_ROUNDOFF32
    meta = json.loads(output.with_suffix(".stablehlo.json").read_text())
    assert meta["input_layout"] == "NHWC" and meta["converter"].startswith("jax.export")


def _windows_of(patches: np.ndarray) -> np.ndarray:
    """3 x 3 windows of the real patches: each patch, and beside it its neighbours in the list
    (not its slide's: any real tissue will do for the arithmetic), white corners."""
    from input_pipeline import windows  # noqa: PLC0415

    n = len(patches)
    rows = np.full((n, 9), -1)
    rows[:, 4] = np.arange(n)
    rows[:, 3], rows[:, 5] = (np.arange(n) - 1) % n, (np.arange(n) + 1) % n
    rows[:, 1], rows[:, 7] = (np.arange(n) + 7) % n, (np.arange(n) + 13) % n
    return windows.assemble_windows(patches, rows)


WINDOW_CALIBRATIONS = [
    pytest.param({"kind": "temperature", "temperature": 1.7, "bias": -0.4}, id="temperature"),
    pytest.param(
        {
            "kind": "isotonic",
            "knots_x": [0.0, 0.2, 0.45, 0.5, 0.8, 1.0],
            "knots_y": [0.02, 0.1, 0.1, 0.6, 0.7, 0.97],
        },
        id="isotonic",
    ),
]


@needs_jax2onnx
@pytest.mark.parametrize("calibration", WINDOW_CALIBRATIONS)
def test_onnx_of_a_window_network_with_its_calibration_matches_jax(calibration, patches, tmp_path):
    """A neighbourhood network (150 x 150 windows, resized down to 96 inside) with its
    calibration in the graph: onnxruntime equals the calibration (numpy) of JAX's P(IDC), to
    the float32 error of the network times the calibration's steepest slope."""
    import onnx  # noqa: PLC0415

    from idc_inference.calibration import Calibration  # noqa: PLC0415

    windows_ = _windows_of(patches)
    weights_file = random_weights(
        "mobilenet_v1", tmp_path, windows_, tta=False, window=3, calibration=calibration
    )
    output = tmp_path / "window.onnx"
    properties = export_onnx.export_onnx(weights_file, output)
    assert properties["input_size"] == "150x150" and properties["window"] == "3x3 patches"
    assert json.loads(properties["calibration"])["kind"] == calibration["kind"]
    dims = [
        d.dim_value or d.dim_param
        for d in onnx.load(str(output)).graph.input[0].type.tensor_type.shape.dim
    ]
    assert dims[1:] == [150, 150, 3]
    weights = weights_lib.read_weights(weights_file)
    raw = jax_p_idc(weights, windows_, tta=False)
    exact = float64_p_idc(weights, windows_, tta=False)
    e32 = float(np.max(np.abs(raw - exact)))
    fitted = Calibration.from_record(calibration)
    grid = np.linspace(1e-4, 1 - 1e-4, 20001)
    slope = float(np.max(np.abs(np.diff(fitted.apply(grid).astype(np.float64)) / np.diff(grid))))
    got = export_onnx.run_onnx(output, windows_)
    expected = fitted.apply(raw)
    assert np.ptp(expected) > 0.2
    bound = slope * (5 * e32 + 8 * UNIT_ROUNDOFF32) + 8 * UNIT_ROUNDOFF32
    assert np.max(np.abs(got - expected)) <= bound, (np.max(np.abs(got - expected)), bound)
