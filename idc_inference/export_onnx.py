"""The eval-mode network of an inference-weights file as ONNX (jax2onnx), or StableHLO (jax.export).

    python export_model.py --weights=idc_inference/shipped/mobilenet_v1_idc.safetensors \\
        --output=mobilenet_v1_idc.onnx                      # in the export venv (.ci/run)

What the exported graph computes (`p_idc_function`), for any batch size N:

    images  uint8 [N, S, S, 3], NHWC, RGB, 0-255: the Kaggle patches as decoded from their PNGs
            (border patches padded with white, 255), at the Kaggle patches' scale; S = 50, or
            for a neighbourhood network (data.window k > 1) the window of k x k patches centred
            on the patch judged, S = 50 k, white where there is no tissue or slide
    p_idc   float32 [N]: P(IDC), the softmax probability of the IDC class; with TTA the mean over
            the 8 dihedral views of each patch (rotations x mirror), as the run evaluated; then
            the weights' calibration (`idc_inference.calibration`), when they carry one

inside: uint8 / 255, training's resize to the network's input size, x * 2 - 1, the network in
eval mode (BatchNorm with its running statistics, no dropout), softmax, the calibration. The
file's `metadata_props` say all this, plus the window, the threshold (on the calibrated scale),
the model and its record.

jax2onnx (0.17.1) and the network:
- `jax.image.resize(..., antialias=True)` is not converted ("resize with antialias=True is not
  supported yet", and its plugin needs a static batch size). The export computes the same resize
  with `jax.image.scale_and_translate`, the function `jax.image.resize` itself calls, with the
  same arguments (scale = size / 50, no translation), which jax2onnx lowers to matrix products.
  For the upscaling used here (50 -> 96) antialiasing changes nothing.
- Its graph optimiser moves NCHW/NHWC transposes but leaves the old shapes in the graph's
  `value_info` (optional shape annotations): onnxruntime then warns about them (V1, V2) or
  refuses the graph (V3-Small: "Mul ... Incompatible dimensions" at a hard-swish after a
  convolution). The export drops the intermediate `value_info`, which onnxruntime infers again,
  and checks the result with onnx's strict shape inference.
- The network is built with the reference layers (`implementation="reference"`) in float32: the
  CPU path's native kernels are XLA custom calls, which no converter can see into.

`--format=stablehlo` writes the same function with `jax.export` (serialized StableHLO, symbolic
batch size; `jax.export.deserialize(data).call(images)` runs it) and its record as JSON beside it:
the fallback for a network whose layers jax2onnx cannot convert.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from idc_inference import run_records
from idc_inference import weights as weights_lib
from idc_inference.calibration import Calibration
from input_pipeline import windows

PATCH_SIZE = 50
NUM_VIEWS = 8
INPUT_NAME = "images"
OUTPUT_NAME = "p_idc"


def input_doc(window: int) -> str:
    size = PATCH_SIZE * window
    what = (
        "Kaggle IDC patches as decoded from their PNG files (border patches padded with white, 255)"
        if window == 1
        else f"windows of {window} x {window} Kaggle IDC patches centred on the patch judged, "
        "white (255) where there is no tissue or slide"
    )
    return (
        f"uint8 [N, {size}, {size}, 3], NHWC, RGB, 0-255: {what}, at the Kaggle patches' scale: "
        f"about 4 micrometres per pixel, {size * 4} x {size * 4} micrometres (MODEL_CARD.md)"
    )


OUTPUT_DOC = "float32 [N]: P(IDC), the softmax probability of invasive ductal carcinoma"


class ExportError(RuntimeError):
    """The converter could not produce a valid model; the message says which layer or check."""


def dihedral_view(images: jax.Array, k: int) -> jax.Array:
    """`input_pipeline.dihedral_view`: k quarter turns, then a left-right mirror when k >= 4."""
    out = jnp.rot90(images, k=k % 4, axes=(-3, -2))
    return jnp.flip(out, axis=-2) if k >= 4 else out


def network_inputs(images: jax.Array, image_size: int, method: str) -> jax.Array:
    """uint8 [N, H, H, 3] -> float32 [N, S, S, 3] in [-1, 1]: `input_pipeline.preprocess` at
    evaluation, its `jax.image.resize` written as the `scale_and_translate` call it makes."""
    x = images.astype(jnp.float32) / 255.0
    if image_size != images.shape[1]:
        scale = jnp.full((2,), image_size / images.shape[1], jnp.float32)
        x = jax.image.scale_and_translate(
            x,
            (x.shape[0], image_size, image_size, x.shape[-1]),
            (1, 2),
            scale,
            jnp.zeros((2,), jnp.float32),
            method=method,
            antialias=True,
            precision=jax.lax.Precision.HIGHEST,
        )
    return x * 2.0 - 1.0


def calibrated(p: jax.Array, calibration: Calibration) -> jax.Array:
    """`Calibration.apply` in operations every converter knows: the logit scaled for
    "temperature"; for "isotonic", np.interp between the knots written as a sum of clipped
    linear segments (y0 + sum of slope_i * clip(p - x_i, 0, x_(i+1) - x_i)), beyond them flat."""
    if calibration.kind == "temperature":
        q = jnp.clip(p, 1e-6, 1.0 - 1e-6)
        return jax.nn.sigmoid(
            (jnp.log(q) - jnp.log1p(-q)) / calibration.temperature + calibration.bias
        )
    if calibration.kind == "isotonic":
        x = np.asarray(calibration.knots_x, np.float64)
        y = np.asarray(calibration.knots_y, np.float64)
        if len(x) == 1:
            return jnp.full_like(p, y[0])
        widths = np.diff(x)
        slopes = np.where(widths > 0, np.diff(y) / np.where(widths > 0, widths, 1.0), 0.0)
        steps = jnp.clip(
            p[:, None] - jnp.asarray(x[:-1], jnp.float32), 0.0, jnp.asarray(widths, jnp.float32)
        )
        return y[0] + jnp.sum(steps * jnp.asarray(slopes, jnp.float32), axis=1)
    return p


def p_idc_function(
    weights: weights_lib.InferenceWeights, *, tta: bool
) -> Callable[[jax.Array], jax.Array]:
    """images uint8 [N, S, S, 3] -> P(IDC) float32 [N], the network's weights as constants."""
    config = weights.config
    calibration = Calibration.from_record(weights.record.get("calibration"))
    model = weights.network(implementation="reference", dtype=jnp.float32)
    views = range(NUM_VIEWS) if tta else (0,)
    size, method = config.preprocess.image_size, config.preprocess.resize_method

    def p_idc(images: jax.Array) -> jax.Array:
        # The views go through the network as one batch [V * N, ...]: one network in the graph,
        # its weights stored once (a graph per view would hold V copies of them).
        stacked = jnp.concatenate([dihedral_view(images, k) for k in views], axis=0)
        probabilities = jax.nn.softmax(model(network_inputs(stacked, size, method)))[:, 1]
        mean = jnp.mean(probabilities.reshape(len(views), images.shape[0]), axis=0)
        return calibrated(mean, calibration)

    return p_idc


def metadata(weights: weights_lib.InferenceWeights, *, tta: bool, converter: str) -> dict:
    """The key -> text pairs stored in the exported file (ONNX `metadata_props`)."""
    record = weights.record
    window = windows.window_size(weights.config)
    size = PATCH_SIZE * window
    return {
        "input": f"{INPUT_NAME}: {input_doc(window)}",
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "input_scale": "0-255 (not normalised: the graph divides by 255 itself)",
        "input_size": f"{size}x{size}",
        "window": f"{window}x{window} patches" if window > 1 else "one patch",
        "calibration": json.dumps(Calibration.from_record(record.get("calibration")).to_record()),
        "output": f"{OUTPUT_NAME}: {OUTPUT_DOC}",
        "tta": "8 dihedral views averaged" if tta else "one view",
        "threshold": repr(weights.threshold),
        "threshold_source": record["threshold"]["source"],
        "model": f"{record['model']} alpha {record['alpha']} at {record['image_size']} px",
        "step": str(weights.step),
        "trained_on": str(record.get("trained_on")),
        "weights": weights.path.name,
        "weights_sha256": str(record.get("tensors_sha256")),
        "intended_use": "research only, not diagnosis (MODEL_CARD.md)",
        "converter": converter,
        "exported_by": json.dumps(run_records.code_version()),
    }


def export_onnx(
    weights_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    tta: bool | None = None,
    opset: int = 23,
) -> dict:
    """Writes the ONNX model of a weights file (TTA None: the run's); returns its metadata."""
    import jax2onnx  # noqa: PLC0415 (the export venv only)
    import onnx  # noqa: PLC0415

    # onnx_ir warns, once per intermediate value, that it skips serialising a type it does not
    # know (jax2onnx leaves some unset; onnxruntime infers them): nothing a user can act on.
    logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)
    weights = weights_lib.read_weights(weights_path)
    tta = weights.tta if tta is None else tta
    function = p_idc_function(weights, tta=tta)
    size = PATCH_SIZE * windows.window_size(weights.config)
    spec = jax.ShapeDtypeStruct(("N", size, size, 3), jnp.uint8)
    try:
        model = jax2onnx.to_onnx(
            function,
            [spec],
            model_name=weights.name,
            opset=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
        )
    except NotImplementedError as error:
        raise ExportError(
            f"jax2onnx cannot convert a layer of {weights.record['model']}: {error}; export it "
            "with --format=stablehlo instead"
        ) from None
    # Stale shape annotations left by jax2onnx's transpose optimiser (module docstring).
    del model.graph.value_info[:]
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(
            f"the converted graph of {weights.name} is not valid ONNX: {error}"
        ) from None
    properties = metadata(
        weights, tta=tta, converter=f"jax2onnx {importlib_version('jax2onnx')}, opset {opset}"
    )
    del model.metadata_props[:]
    for key, value in properties.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"P(IDC) of Kaggle IDC patches. {properties['input']}. -> {OUTPUT_DOC}."
    pathlib.Path(output).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(output))
    return properties


def export_stablehlo(
    weights_path: str | os.PathLike, output: str | os.PathLike, *, tta: bool | None = None
) -> dict:
    """Writes the function as serialized StableHLO (jax.export) and its metadata as JSON."""
    weights = weights_lib.read_weights(weights_path)
    tta = weights.tta if tta is None else tta
    function = p_idc_function(weights, tta=tta)
    (batch,) = jax.export.symbolic_shape("N")
    size = PATCH_SIZE * windows.window_size(weights.config)
    spec = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
    exported = jax.export.export(jax.jit(function), platforms=("cpu", "cuda"))(spec)
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(exported.serialize())
    properties = metadata(weights, tta=tta, converter=f"jax.export (jax {jax.__version__})")
    output.with_suffix(output.suffix + ".json").write_text(json.dumps(properties, indent=1))
    return properties


def run_onnx(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """P(IDC) of uint8 patches by an exported ONNX file, in onnxruntime on the CPU."""
    import onnxruntime  # noqa: PLC0415

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, np.uint8)})[0]


def importlib_version(package: str) -> str:
    import importlib.metadata  # noqa: PLC0415

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
