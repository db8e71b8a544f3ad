"""The Python API (`idc_inference.load`, `IDCModel.predict`) and the inference-weights format.

The tiny trained run of test_inference is exported to the weights format and loaded back; its
P(IDC) must equal, bit for bit, what the run's own checkpoint gives through the same predictor
(same network, same compiled function, same values). The shipped model is checked against its
record, and predicts real patches of patients it never trained on.
"""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import idc_inference
from idc_inference import model as model_lib
from idc_inference import run_records
from idc_inference import weights as weights_lib
from idc_inference.predictor import Predictor
from input_pipeline.patches import load_patch
from input_pipeline.preprocessing import resize
from tests.conftest import EMBEDDED_SAMPLE
from tests.test_inference import trained_tiny_workdir
from trainer import RunDirectory
from trainer import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
PATIENT = "12878"  # a patient of the sample with border patches (test_inference.REAL_PATIENTS)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> pathlib.Path:
    return trained_tiny_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_weights(tiny_run, tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    run_records.export_workdir(tiny_run, path)
    return path


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    files = sorted((EMBEDDED_SAMPLE / PATIENT).rglob("*.png"))
    return np.stack([load_patch(f).image for f in files])


@pytest.fixture(scope="module")
def from_weights(tiny_weights):
    return idc_inference.load(tiny_weights, batch_size=16)


@pytest.fixture(scope="module")
def from_run(tiny_run):
    return idc_inference.load(tiny_run, batch_size=16)


# ----------------------------------------------------------------------------- the format


def assert_no_machine_paths(record: dict) -> None:
    """No path of the machine that trained in a weights record's data config (paths inside the
    repository, such as data/idc_245/all, may stay)."""
    data = record["config"]["data"]
    assert not any(str(value).startswith("/") for value in data.values()), data


def test_the_network_is_the_one_training_builds(tiny_run):
    config = RunDirectory(tiny_run).config()
    trained = nnx.eval_shape(lambda: state_lib.create_model(config, seed=0))
    built = weights_lib.abstract_network(config)
    assert nnx.graphdef(built) == nnx.graphdef(trained)
    for collection, kind in weights_lib.COLLECTIONS.items():
        ours = weights_lib.tensor_names(nnx.state(built, kind), collection)
        theirs = weights_lib.tensor_names(nnx.state(trained, kind), collection)
        assert {k: (v.get_value().shape, v.get_value().dtype) for k, v in ours.items()} == {
            k: (v.get_value().shape, v.get_value().dtype) for k, v in theirs.items()
        }


def test_weights_hold_parameters_and_statistics_only_with_their_record(tiny_run, tiny_weights):
    weights = weights_lib.read_weights(tiny_weights)
    config, model, step = RunDirectory(tiny_run).restore_model()
    expected = weights_lib.network_tensors(model)
    assert set(weights.tensors) == set(expected)
    assert {name.split("/")[0] for name in weights.tensors} == {"params", "batch_stats"}
    for name, array in expected.items():
        np.testing.assert_array_equal(weights.tensors[name], array)
    summary = RunDirectory(tiny_run).summary()
    record = weights.record
    assert record["step"] == step == summary["steps"]
    assert weights.threshold == pytest.approx(summary["final_validation"]["tuned_threshold"])
    assert weights.tta is config.eval_tta is True
    assert record["config"]["model"] == config.model.to_dict()
    # The patients: the split's, disjoint, as many as summary.json counts.
    patients = record["patients"]
    for name, ids in patients.items():
        assert len(ids) == summary["data_info"]["counts"][name]["patients"]
    assert not set(patients["train"]) & (set(patients["validation"]) | set(patients["test"]))
    assert not set(patients["validation"]) & set(patients["test"])
    assert record["summary"]["test"]["roc_auc"] == summary["test"]["roc_auc"]
    assert_no_machine_paths(record)


def test_a_weights_file_predicts_exactly_as_the_runs_checkpoint(
    from_weights, from_run, tiny_run, patches
):
    np.testing.assert_array_equal(from_weights.predict(patches), from_run.predict(patches))
    predictor, _, _ = Predictor.from_workdir(tiny_run, batch_size=16, tta=True)
    np.testing.assert_array_equal(from_weights.predict(patches), predictor(patches))


def test_defaults_are_the_runs_evaluation_settings_and_can_be_overridden(
    from_weights, from_run, tiny_weights
):
    for model in (from_weights, from_run):
        assert model.tta is True and model.predictor.tta is True
        assert model.threshold == pytest.approx(from_weights.threshold)
        assert "validation" in model.threshold_source
    one_view = idc_inference.load(tiny_weights, tta=False, threshold=0.25, batch_size=16)
    assert one_view.tta is False and one_view.predictor.views == (0,)
    assert one_view.threshold == 0.25 and one_view.threshold_source == "given"
    with pytest.raises(model_lib.ModelArgumentError, match=r"\[0, 1\]"):
        idc_inference.load(tiny_weights, threshold=1.5)
    with pytest.raises(model_lib.ModelArgumentError, match="one checkpoint"):
        idc_inference.load(tiny_weights, checkpoint="best")


def test_describe_says_what_produced_the_predictions(from_weights, from_run):
    description = from_weights.describe()
    assert description["source"] == "weights" and from_run.describe()["source"] == "workdir"
    for key in ("checkpoint", "step", "threshold", "tta", "trained_on", "model"):
        assert description[key] is not None, key
    assert description["code_version"]["version"]
    json.dumps(description)  # serialisable
    assert isinstance(from_weights.config.model.name, str) and from_weights.step > 0


def test_a_directory_that_is_not_a_run_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(model_lib.ModelSourceError, match="not a training run"):
        idc_inference.load(tmp_path)
    with pytest.raises(model_lib.ModelSourceError, match="does not exist"):
        idc_inference.load(tmp_path / "nope")


# ----------------------------------------------------------------------------- broken files


@pytest.fixture
def copied_weights(tiny_weights, tmp_path) -> pathlib.Path:
    target = tmp_path / "copy.safetensors"
    shutil.copy(tiny_weights, target)
    shutil.copy(weights_lib.sidecar_path(tiny_weights), weights_lib.sidecar_path(target))
    return target


def test_a_truncated_weights_file_is_one_clear_error_naming_it(copied_weights):
    data = copied_weights.read_bytes()
    copied_weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(weights_lib.WeightsError, match=str(copied_weights)) as error:
        weights_lib.read_weights(copied_weights)
    assert "corrupted" in str(error.value) and "\n" not in str(error.value)
    # Without the checksum, safetensors itself refuses the truncated buffer.
    record = json.loads(weights_lib.sidecar_path(copied_weights).read_text())
    del record["tensors_sha256"]
    weights_lib.sidecar_path(copied_weights).write_text(json.dumps(record))
    with pytest.raises(weights_lib.WeightsError, match="truncated") as error:
        weights_lib.read_weights(copied_weights)
    assert str(copied_weights) in str(error.value) and "\n" not in str(error.value)


def test_a_changed_byte_inside_a_tensor_is_caught(copied_weights):
    data = bytearray(copied_weights.read_bytes())
    data[-5] ^= 0x40  # inside the last tensor's buffer: safetensors alone cannot notice
    copied_weights.write_bytes(bytes(data))
    with pytest.raises(weights_lib.WeightsError, match="corrupted or was changed"):
        weights_lib.read_weights(copied_weights)


def test_a_broken_or_missing_record_is_one_clear_error(copied_weights):
    record_file = weights_lib.sidecar_path(copied_weights)
    record_file.write_text('{"format": "idc-inference-weights", "format_ver')
    with pytest.raises(weights_lib.WeightsError, match=str(record_file)):
        weights_lib.read_weights(copied_weights)
    record_file.unlink()
    with pytest.raises(weights_lib.WeightsError, match="not found"):
        weights_lib.read_weights(copied_weights)


def test_weights_that_do_not_fit_the_config_are_refused(copied_weights):
    record_file = weights_lib.sidecar_path(copied_weights)
    record = json.loads(record_file.read_text())
    record["config"]["model"]["alpha"] = 0.5
    record_file.write_text(json.dumps(record))
    with pytest.raises(weights_lib.WeightsError, match="do not fit|has shape"):
        weights_lib.read_weights(copied_weights).network()


# ----------------------------------------------------------------------------- inputs


def test_inputs_of_the_wrong_shape_or_range_are_refused_with_what_to_do(patches):
    prepare = model_lib.prepare_patches
    with pytest.raises(ValueError, match=r"image\[None\]"):
        prepare(patches[0])
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        prepare(patches[0, :, :, 0])
    with pytest.raises(ValueError, match="3 channels"):
        prepare(np.concatenate([patches, patches[..., :1]], axis=-1))
    with pytest.raises(ValueError, match="3 channels"):
        prepare(np.moveaxis(patches, -1, 1))  # channels first
    with pytest.raises(ValueError, match="square"):
        prepare(patches[:, :35])
    with pytest.raises(ValueError, match=r"\[0, 1\].*divide 0-255 floats by 255"):
        prepare(patches.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare(patches.astype(np.float32) / 255 - 0.1)
    with pytest.raises(ValueError, match="NaN"):
        prepare(np.full((1, 50, 50, 3), np.nan))
    with pytest.raises(ValueError, match="0-255"):
        prepare(patches.astype(np.int32) * 2)
    with pytest.raises(ValueError, match="uint8"):
        prepare(patches > 128)


def test_floats_in_0_1_and_wider_integers_mean_the_same_patches(patches):
    prepare = model_lib.prepare_patches
    np.testing.assert_array_equal(prepare(patches.astype(np.float32) / 255), patches)
    np.testing.assert_array_equal(prepare(patches.astype(np.int64)), patches)
    assert prepare(patches[:0]).shape == (0, 50, 50, 3)


def test_other_sizes_are_resized_to_50_with_trainings_resize(patches, from_weights):
    # Each pixel repeated 2x2: a 100x100 patch of the same field of view.
    large = np.repeat(np.repeat(patches[:8], 2, axis=1), 2, axis=2)
    prepared = model_lib.prepare_patches(large)
    expected = np.asarray(jax.jit(lambda x: resize(x.astype("float32"), 50))(large))
    np.testing.assert_array_equal(prepared, np.clip(np.round(expected), 0, 255).astype(np.uint8))
    # The same tissue: antialiased 2x downscaling blurs over a pixel's neighbours, no further.
    assert np.mean(np.abs(prepared.astype(int) - patches[:8])) < 8
    np.testing.assert_array_equal(from_weights.predict(large), from_weights.predictor(prepared))


# ----------------------------------------------------------------------------- the shipped model


def shipped_record() -> dict:
    if not model_lib.SHIPPED_WEIGHTS.is_file():
        pytest.fail(f"the shipped model is missing: {model_lib.SHIPPED_WEIGHTS}")
    return json.loads(weights_lib.sidecar_path(model_lib.SHIPPED_WEIGHTS).read_text())


def unseen_patient() -> pathlib.Path:
    """A patient folder in the repository that the shipped model never trained on: the demo
    slide's when it is there (a validation or test patient), else the first of the sample's in
    the shipped run's test split."""
    record = shipped_record()
    held_out = set(record["patients"]["validation"]) | set(record["patients"]["test"])
    demo = sorted((REPO / "data" / "demo_slide").glob("[0-9]*"))
    candidates = demo + sorted(
        (EMBEDDED_SAMPLE / str(p) for p in record["patients"]["test"]),
        key=lambda p: p.name,
    )
    for folder in candidates:
        if folder.is_dir() and int(folder.name) in held_out:
            assert int(folder.name) not in record["patients"]["train"]
            return folder
    pytest.fail("no patient folder of the shipped model's held-out patients in the repository")


def test_the_shipped_model_is_small_and_says_what_it_is():
    record = shipped_record()
    size = model_lib.SHIPPED_WEIGHTS.stat().st_size
    assert size <= 15 * 2**20
    assert record["model"] == "mobilenet_v1" and record["tta"] is True
    assert 0.0 < record["threshold"]["value"] < 1.0
    summary = record["summary"]
    patients = record["patients"]
    for name in ("train", "validation", "test"):
        assert len(patients[name]) == summary["data_info"]["counts"][name]["patients"]
    assert len(set().union(*map(set, patients.values()))) == sum(map(len, patients.values()))
    assert summary["test_intervals"]["at_0.5"]["roc_auc"]["low"] > 0.5
    assert summary["test_calibration"]["ece"] < 0.2
    assert_no_machine_paths(record)


def test_the_records_scale_is_the_slide_programs():
    from idc_inference import slide_files  # noqa: PLC0415 (OpenSlide)

    assert (
        f"{slide_files.KAGGLE_PATCH_MPP} micrometres per pixel"
        in shipped_record()["input"]["scale"]
    )


def test_the_shipped_model_predicts_patients_it_never_trained_on():
    folder = unseen_patient()
    files = sorted(folder.rglob("*.png"))[::3]  # both classes (sorted by class folder), fewer
    images = np.stack([load_patch(f).image for f in files])
    labels = np.array([int(f.stem[-1]) for f in files])
    model = idc_inference.load(batch_size=64)
    assert model.source == "shipped" and "trained on" in model.announce()
    p_idc = model.predict(images)
    assert p_idc.dtype == np.float32 and p_idc.shape == (len(files),)
    assert np.all((p_idc >= 0) & (p_idc <= 1))
    if 0 < labels.sum() < len(labels):  # better than chance on its IDC and non-IDC patches
        assert p_idc[labels == 1].mean() > p_idc[labels == 0].mean()


def test_importing_the_package_prints_nothing_and_loads_no_orbax():
    code = "import sys, idc_inference; print(sorted(m for m in sys.modules if 'orbax' in m))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]" and result.stderr == ""
