"""The trainer: loss, a batch overfitted, sharding equivalence, main.py end to end and resume."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from evaluation import metrics
from input_pipeline.sharding import Sharding
from tests.commands import subprocess_environment
from tests.references import float32_sum_bound, naive_dense_conv
from trainer import RunDirectory, evaluate, loop, steps
from trainer import state as state_lib
from trainer import summary as summary_lib
from trainer.compiled import build as build_training

REPO = pathlib.Path(__file__).resolve().parents[1]

# Small enough for CPU tests: alpha 0.25, 32 px, the tiny real set (conftest.tiny_data_dir).
TINY_OVERRIDES = (
    "--config.model.alpha=0.25",
    "--config.preprocess.image_size=32",
    "--config.data.dataset=kaggle_idc",
    "--config.global_batch_size=16",
    "--config.eval_batch_size=32",
    "--config.log_every_steps=2",
    "--config.progress_bar=False",
)


def tiny_config(data_dir: pathlib.Path, **overrides):
    config = default.get_config()
    config.model.alpha = 0.25
    config.preprocess.image_size = 32
    config.data.dataset = "kaggle_idc"
    config.data.data_dir = str(data_dir)
    config.global_batch_size = 16
    config.eval_batch_size = 32
    config.progress_bar = False
    for key, value in overrides.items():
        config[key] = value
    return default.finalize(config)


def run_main(workdir, data_dir, *extra, config="configs/v1.py", env=None, wait=True):
    command = [
        sys.executable,
        "main.py",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *TINY_OVERRIDES,
        *extra,
    ]
    environment = subprocess_environment(**(env or {}))
    if not wait:
        return subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600
    )


# ----------------------------------------------------------------------------- unit


def test_cross_entropy_matches_numpy_with_mask_smoothing_and_weights():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 2)).astype(np.float32)
    labels = np.array([0, 1, 1, 0, 1, 0])
    mask = np.array([1, 1, 1, 1, 0, 0], bool)
    weights = np.array([0.7, 1.9], np.float32)
    smoothing = 0.1
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = np.eye(2)[labels] * (1 - smoothing) + smoothing / 2
    per_example = -(targets * log_probs).sum(-1)
    expected = (per_example * weights[labels] * mask).sum() / mask.sum()
    got, got_per_example = steps.cross_entropy_loss(
        jnp.asarray(logits),
        jnp.asarray(labels),
        jnp.asarray(mask),
        label_smoothing=smoothing,
        weights_per_class=jnp.asarray(weights),
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # The per-example loss (the metric) is the plain cross-entropy -log p(label), every row.
    plain = -log_probs[np.arange(6), labels]
    np.testing.assert_allclose(got_per_example, plain, rtol=1e-6)


def test_balanced_class_weights_are_inverse_frequency():
    config = default.get_config()
    config.class_weights = "balanced"
    weights = state_lib.class_weights(config, np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(weights, [4 / (2 * 3), 4 / (2 * 1)])


def test_warmup_cosine_schedule_peaks_and_decays():
    config = default.get_config()
    config.schedule, config.warmup_epochs, config.num_epochs = "warmup_cosine", 1.0, 4
    schedule = state_lib.learning_rate_schedule(config, steps_per_epoch=10)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(config.learning_rate)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-12)


def tiny_trainer(data_dir: pathlib.Path, learning_rate: float):
    """(state, jitted train step, training batches as global arrays, sharding) of a tiny model."""
    import input_pipeline

    config = tiny_config(data_dir, learning_rate=learning_rate)
    dataset = input_pipeline.load_dataset(config.data)
    sharding = Sharding.over_all_devices()
    training = build_training(config, sharding)
    state, step = training.state, training.train_step
    batches = (
        sharding.put_batch({k: batch[k] for k in steps.BATCH_KEYS})
        for batch in input_pipeline.iterate_batches(
            dataset.train, global_batch_size=16, seed=0, epoch=0, shuffle=True, drop_remainder=True
        )
    )
    return state, step, batches


@pytest.fixture(scope="module")
def compiled(data_dir):
    """One tiny model's state, jitted train step and a batch, shared (one compile) by the tests."""
    state, step, batches = tiny_trainer(data_dir, learning_rate=1e-3)
    batch = next(batches)
    assert 0 < int(batch["label"].sum()) < 16, "the batch should hold both classes"
    return state, step, batch


def _fresh_copy(state):
    # The step donates its input state: tests that reuse the fixture's state give it a copy.
    return jax.tree.map(jnp.copy, state)


def test_overfits_a_small_batch_to_full_accuracy(compiled):
    state, step, batch = compiled
    state = _fresh_copy(state)
    losses = []
    for _ in range(60):
        state = state_lib.reset_epoch_metrics(state)
        state = step(state, batch)
        losses.append(float(state.epoch_metrics.compute()["loss"]))
    assert float(state.epoch_metrics.compute()["accuracy"]) == 1.0
    assert losses[-1] < losses[0] / 10


def test_nonfinite_loss_keeps_state_and_names_step(compiled):
    state, step, batch = compiled
    state = step(_fresh_copy(state), batch)
    params_before = jax.tree.map(np.asarray, state.params)
    # An exploded parameter (as a diverging run produces) makes the loss NaN at the next step.
    poisoned = _fresh_copy(state).replace(
        params=jax.tree.map(lambda p: p * jnp.nan if p.ndim == 2 else p, state.params)
    )
    poisoned = step(poisoned, batch)
    assert int(poisoned.nonfinite_step) == 2
    with pytest.raises(FloatingPointError, match="at step 2"):
        loop.check_finite(poisoned)
    loop.check_finite(state)  # the good state is untouched
    after = jax.tree.map(np.asarray, state.params)
    jax.tree.map(np.testing.assert_array_equal, after, params_before)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("one_epoch")
    result = run_main(workdir, data_dir, "--config.num_epochs=1")
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir, result


def test_main_one_epoch_writes_every_output(one_epoch_run):
    workdir, result = one_epoch_run
    for name in (
        "config.json",
        "parameters.txt",
        "metrics.jsonl",
        "history.csv",
        "curves.png",
        "summary.json",
    ):
        assert (workdir / name).is_file(), name
    assert not (workdir / "run.lock").exists(), "the workdir's lock is released at the end"
    assert "stem/conv/kernel" in (workdir / "parameters.txt").read_text()
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["dataset"] == "kaggle_idc" and summary["data_selection"] == (
        "data.dataset='kaggle_idc'"
    )
    assert summary["data_source"].endswith("downloads/manual")
    assert summary["num_epochs"] == 1
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    for key in ("balanced_accuracy", "f1", "roc_auc", "pr_auc", "majority_baseline", "tp"):
        assert key in summary["test"]
    assert summary["trainable_parameters"] > 0 and summary["multiply_adds_per_image"] > 0
    _check_test_statistics(summary)
    history = (workdir / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "val_roc_auc" in history[0]
    # The final network's P(IDC) of every validation and test patch, as its summary scored them.
    for split, key in (("validation", "final_validation"), ("test", "test")):
        with np.load(workdir / f"predictions_{split}.npz", allow_pickle=False) as table:
            assert set(table.files) == {"p_idc", "label", "patient", "x", "y"}
            assert len(table["label"]) == summary[key]["num_examples"]
            assert metrics.roc_auc(table["label"], table["p_idc"]) == pytest.approx(
                summary[key]["roc_auc"], abs=1e-12
            )


def test_main_says_what_matters_in_a_few_lines_and_ends_with_the_test_metrics(one_epoch_run):
    """The console of a run: the data set and why, the split, the network and its costs, the
    devices, progress, an epoch line and a closing line; no config dump, no parameter table, no
    third-party chatter (TPU probe, TFDS notes, orbax, TensorFlow's start-up)."""
    workdir, result = one_epoch_run
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) < 15, "\n".join(lines)
    text = "\n".join(lines)
    for noise in ("Config:", "libtpu", "dataset_info.json", "oneDNN", "absl::InitializeLog", "| "):
        assert noise not in text, noise
    assert any(
        line.startswith("data: kaggle_idc (data.dataset='kaggle_idc'), patient split: ")
        for line in lines
    ), text
    assert any(
        line.startswith("model: mobilenet_v1 alpha=0.25 at 32 px, ")
        and "parameters (parameters.txt)" in line
        and "1 cpu device" in line
        for line in lines
    ), text
    assert any(line.startswith("epoch 1/1: train loss ") for line in lines), text
    summary = json.loads((workdir / "summary.json").read_text())
    interval = summary["test_intervals"]["at_0.5"]["roc_auc"]
    closing = lines[-1]
    assert closing.startswith(
        f"test ROC AUC {summary['test']['roc_auc']:.3f} "
        f"[{interval['low']:.2f}, {interval['high']:.2f}], balanced accuracy "
    ), closing
    assert "at threshold 0.5, 95% intervals over the 3 test patients (30 patches)" in closing
    assert closing.endswith(
        "wrote summary.json, history.csv, curves.png, metrics.jsonl, parameters.txt, "
        f"checkpoints/ to {workdir}"
    ), closing


def test_curves_are_drawn_again_from_the_history(one_epoch_run, tmp_path):
    workdir, _ = one_epoch_run
    copy = tmp_path / "run"
    for name in ("config.json", "history.csv"):
        (copy / name).parent.mkdir(exist_ok=True)
        (copy / name).write_bytes((workdir / name).read_bytes())
    path = RunDirectory(copy).redraw_curves()
    assert path == copy / "curves.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_test_statistics(summary):
    """test_intervals, test_calibration and test_per_patient, as JSON gives them back."""
    test_patients = summary["data_info"]["counts"]["test"]["patients"]
    intervals = summary["test_intervals"]
    for key, names in (
        ("at_0.5", ("roc_auc", "balanced_accuracy", "f1", "pr_auc", "accuracy")),
        ("at_validation_threshold", ("balanced_accuracy", "f1", "accuracy")),
    ):
        block = intervals[key]
        assert block["num_patients"] == test_patients == 3  # 3 of the tiny set's 20 patients
        assert block["num_resamples"] == 2000
        tuned = summary["test" if key == "at_0.5" else "test_at_validation_threshold"]
        assert block["threshold"] == tuned["threshold"]
        for name in names:
            interval = block[name]
            assert interval["estimate"] == tuned[name], (key, name)
            used, dropped = interval["num_resamples_used"], interval["num_resamples_dropped"]
            assert used + dropped == block["num_resamples"], (key, name)
            # Each tiny-set patient has both classes: every resample defines every metric. The
            # unresampled set is drawn with probability 3!/3^3 = 22%, so the 2.5-97.5 percentile
            # interval holds its value, the estimate.
            assert (used, dropped) == (2000, 0), (key, name)
            assert interval["low"] <= interval["estimate"] <= interval["high"], (key, name)
    assert "roc_auc" not in intervals["at_validation_threshold"]
    calibration = summary["test_calibration"]
    assert 0.0 <= calibration["ece"] <= 1.0 and 0.0 <= calibration["mce"] <= 1.0
    assert calibration["ece"] <= calibration["mce"] + 1e-15  # a mean of the gaps, their max
    assert calibration["ece"] == summary["test"]["ece"]
    assert sum(calibration["count"]) == summary["test"]["num_examples"]
    assert len(calibration["bin_edges"]) == calibration["num_bins"] + 1
    per_patient = summary["test_per_patient"]
    assert len(per_patient["patients"]) == per_patient["distribution"]["num_patients"]
    assert len(per_patient["patients"]) == test_patients == summary["test"]["num_patients"]
    assert sum(row["patches"] for row in per_patient["patients"]) == summary["test"]["num_examples"]


def test_test_statistics_bootstrap_resamples_as_asked():
    rng = np.random.default_rng(0)
    split = types.SimpleNamespace(label=rng.integers(0, 2, 60), patient=np.repeat([4, 2, 9], 20))
    probabilities = rng.random(60)
    assert default.get_config().eval_bootstrap_resamples == 2000
    off = summary_lib.test_statistics(
        split.label, probabilities, split.patient, 0.3, bootstrap_resamples=0
    )
    assert off["test_intervals"] is None
    assert off["test_calibration"]["ece"] == metrics.expected_calibration_error(
        split.label, probabilities
    )
    assert [row["patient"] for row in off["test_per_patient"]["patients"]] == [2, 4, 9]
    intervals = summary_lib.test_statistics(
        split.label, probabilities, split.patient, 0.3, bootstrap_resamples=30
    )["test_intervals"]
    assert intervals["at_0.5"]["num_resamples"] == 30 and intervals["at_0.5"]["threshold"] == 0.5
    assert intervals["at_validation_threshold"]["threshold"] == 0.3
    assert "pr_auc" in intervals["at_0.5"] and "pr_auc" not in intervals["at_validation_threshold"]


def test_mistyped_config_key_is_an_error(tmp_path, data_dir):
    result = run_main(tmp_path, data_dir, "--config.num_epoch=1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --config.num_epoch: the config has no key 'num_epoch'; did you mean "
        "--config.num_epochs? (configs/default.py lists every key)"
    ]


@pytest.mark.heavy
def test_resume_after_sigkill_gives_identical_results(tmp_path, data_dir):
    extra = ("--config.num_epochs=2", "--config.checkpoint_every_steps=4")
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference = run_main(reference_dir, data_dir, *extra)
    assert reference.returncode == 0, reference.stderr

    process = run_main(resumed_dir, data_dir, *extra, wait=False)
    checkpoint_dir = resumed_dir / "checkpoints"
    deadline = time.time() + 300
    # Kill as soon as a mid-epoch checkpoint is complete: the run is then mid-way through training.
    while time.time() < deadline and process.poll() is None:
        finished = [p for p in checkpoint_dir.glob("*") if p.name.isdigit()]
        if finished:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = max(int(p.name) for p in checkpoint_dir.glob("*") if p.name.isdigit())
    killed_meta = json.loads((checkpoint_dir / str(killed_at) / "meta" / "metadata").read_text())
    resumed = run_main(resumed_dir, data_dir, *extra)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint of step {killed_at}" in resumed.stderr
    # The killed run's lock was taken over, and said so.
    assert "took over" in resumed.stderr and "no longer running" in resumed.stderr

    reference_summary = json.loads((reference_dir / "summary.json").read_text())
    resumed_summary = json.loads((resumed_dir / "summary.json").read_text())
    assert resumed_summary["test"] == reference_summary["test"]
    assert resumed_summary["final_validation"] == reference_summary["final_validation"]
    assert (resumed_dir / "history.csv").read_text() == (reference_dir / "history.csv").read_text()
    # The time spent is summed over both invocations, the killed one up to its last checkpoint.
    assert (reference_summary["invocations"], resumed_summary["invocations"]) == (1, 2)
    assert killed_meta["invocations"] == 1 and killed_meta["wall_time_s"] > 0
    assert resumed_summary["wall_time_s"] > killed_meta["wall_time_s"]


def test_missing_kaggle_download_says_what_to_do(tmp_path):
    result = run_main(tmp_path / "run", tmp_path / "tfds", "--config.data.dataset=kaggle_idc")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-2].startswith("error: the Kaggle IDC data set is not in "), lines
    assert "kaggle.com/datasets/paultimothymooney/breast-histopathology-images" in lines[-2]
    assert "--config.data.dataset=idc_sample" in lines[-1]


def test_bn_recalibration_sets_the_average_batch_statistics(compiled, data_dir):
    import input_pipeline

    state, step, batch = compiled
    state = step(_fresh_copy(state), batch)  # running statistics now differ from any batch's
    config = tiny_config(data_dir)
    sharding = Sharding.over_all_devices()
    recalibrate = evaluate.BatchNormRecalibration(config, sharding)
    dataset = input_pipeline.load_dataset(config.data)
    local_batches = list(
        input_pipeline.iterate_batches(
            dataset.train, global_batch_size=16, seed=5, epoch=0, shuffle=True, drop_remainder=True
        )
    )[:2]
    recalibrated = recalibrate(_fresh_copy(state), iter(local_batches))

    # Independently: the stem convolution's output statistics per batch, averaged over batches,
    # from a float64 loop over the same preprocessed images and the stem's kernel.
    kernel = np.asarray(state.params["stem"]["conv"]["kernel"][...], np.float64)
    means, variances, abs_means, square_means = [], [], [], []
    for local_batch in local_batches:
        images = np.asarray(
            input_pipeline.preprocess(local_batch["image"], config.preprocess, train=False),
            np.float64,
        )
        stem_output = naive_dense_conv(images, kernel, stride=2).reshape(-1, kernel.shape[-1])
        abs_output = naive_dense_conv(np.abs(images), np.abs(kernel), stride=2)
        means.append(stem_output.mean(0))
        variances.append(stem_output.var(0))
        abs_means.append(abs_output.reshape(-1, kernel.shape[-1]).mean(0))
        square_means.append((stem_output**2).mean(0))
    # float32 rounding: each output sums 27 products, each mean sums its rows; the variance is
    # E[x^2] - E[x]^2, whose error is bounded by that of E[x^2] (and of E[x]^2).
    rows = len(stem_output)
    mean_bound = float32_sum_bound(np.mean(abs_means, 0), 27 + rows)
    var_bound = 3 * float32_sum_bound(np.mean(square_means, 0), 27 + rows)
    stem_stats = recalibrated.batch_stats["stem"]["norm"]
    assert np.all(np.abs(stem_stats["mean"][...] - np.mean(means, 0)) <= mean_bound)
    assert np.all(np.abs(stem_stats["var"][...] - np.mean(variances, 0)) <= var_bound)
    assert not np.allclose(state.batch_stats["stem"]["norm"]["var"][...], np.mean(variances, 0))
    # The weights are untouched.
    jax.tree.map(np.testing.assert_array_equal, recalibrated.params, state.params)


@pytest.mark.heavy
@pytest.mark.parametrize(
    "config_file, alpha",
    [
        ("configs/v2.py", 0.25),
        ("configs/v3_small.py", 0.25),
        ("configs/v3_large.py", 0.25),
        ("configs/resnet50.py", 1.0),  # no width multiplier
        ("configs/window3.py", 0.25),  # 3 x 3 windows of patches
    ],
)
def test_every_network_config_trains_end_to_end(tmp_path, data_dir, config_file, alpha):
    result = run_main(
        tmp_path,
        data_dir,
        "--config.num_epochs=1",
        f"--config.model.alpha={alpha}",
        config=config_file,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    from experiment import paper

    assert summary["model"] == paper.load_config_file(REPO / config_file).model.name
    assert 0.0 <= summary["test"]["roc_auc"] <= 1.0 and summary["steps"] > 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["data"]["window"] == paper.load_config_file(REPO / config_file).data.window
