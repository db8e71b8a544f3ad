"""The synthetic twin: structure like the real set, learnable by texture but not by mean colour."""

import numpy as np
import pytest

from input_pipeline import published_splits, synthetic


@pytest.fixture(scope="module")
def small_set():
    return synthetic.generate(num_patients=30, num_patches=3000, seed=0)


def test_deterministic_by_seed():
    a = synthetic.generate(num_patients=2, num_patches=60, seed=3)
    b = synthetic.generate(num_patients=2, num_patches=60, seed=3)
    c = synthetic.generate(num_patients=2, num_patches=60, seed=4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])


def test_structure_matches_the_kaggle_set(small_set):
    s = small_set
    assert s["image"].shape == (3000, 50, 50, 3) and s["image"].dtype == np.uint8
    assert len(np.unique(s["patient"])) == 30
    assert np.all((s["x"] - 1) % 50 == 0) and np.all((s["y"] - 1) % 50 == 0)
    # Unique positions per patient, and names that parse back to the columns.
    keys = set(zip(s["patient"].tolist(), s["x"].tolist(), s["y"].tolist()))
    assert len(keys) == 3000
    name = s["file_name"][17]
    assert name == f"{s['patient'][17]}_idx5_x{s['x'][17]}_y{s['y'][17]}_class{s['label'][17]}.png"
    # The first patients carry the published protocol's ids, in all three lists.
    ids = set(np.unique(s["patient"]).tolist())
    for listed in (published_splits.TRAIN, published_splits.VALIDATION, published_splits.TEST):
        assert ids & set(listed)


def test_positive_fraction_and_its_spread_over_patients(small_set):
    s = small_set
    overall = s["label"].mean()
    assert 0.18 < overall < 0.38  # the real set: 0.284
    per_patient = [s["label"][s["patient"] == p].mean() for p in np.unique(s["patient"])]
    assert np.std(per_patient) > 0.1  # varies per patient as in the real set
    assert min(per_patient) < 0.05


def test_full_size_layout_matches_real_counts():
    layout = synthetic.make_layout(synthetic.REAL_NUM_PATIENTS, synthetic.REAL_NUM_PATCHES)
    assert len(layout) == 277_524
    assert len(np.unique(layout.patient)) == 279
    assert abs(layout.label.mean() - 78_786 / 277_524) < 0.04
    border_fraction = np.mean((layout.height < 50) | (layout.width < 50))
    assert 0.001 < border_fraction < 0.01  # the real sample: 4 of 979


def test_border_patches_are_white_beyond_their_true_size(small_set):
    s = small_set
    border = np.flatnonzero((s["height"] < 50) | (s["width"] < 50))
    assert len(border) >= 30  # at least one per patient
    for i in border:
        h, w = s["height"][i], s["width"][i]
        assert np.all(s["image"][i, h:] == 255) and np.all(s["image"][i, :, w:] == 255)
        assert s["image"][i, :h, :w].mean() < 250  # tissue inside


def _balanced_accuracy_by_least_squares(features, label, train_rows):
    """Linear least-squares classifier; threshold chosen on the training rows."""
    design = np.c_[features, np.ones(len(features))]
    weights = np.linalg.lstsq(design[train_rows], 2.0 * label[train_rows] - 1, rcond=None)[0]
    score = design @ weights

    def balanced(rows, threshold):
        predicted = score[rows] > threshold
        return 0.5 * (predicted[label[rows] == 1].mean() + (~predicted[label[rows] == 0]).mean())

    thresholds = np.quantile(score[train_rows], np.linspace(0.05, 0.95, 37))
    best = max(thresholds, key=lambda t: balanced(train_rows, t))
    return balanced(~train_rows, best)


def _erode(mask, size):
    """Binary erosion with a size x size square (naive shifts): survives only in large blobs."""
    h = mask.shape[1] - size + 1
    out = np.ones((mask.shape[0], h, h), bool)
    for dy in range(size):
        for dx in range(size):
            out &= mask[:, dy : dy + h, dx : dx + h]
    return out


def test_mean_colour_is_a_weak_cue_texture_a_strong_one(small_set):
    s = small_set
    label = s["label"]
    train_rows = np.isin(s["patient"], np.unique(s["patient"])[::2])  # split by patient
    pixels = s["image"].astype(np.float32)
    mean_rgb = pixels.mean(axis=(1, 2))
    by_colour = _balanced_accuracy_by_least_squares(mean_rgb, label, train_rows)
    # Texture: how much of the nuclear (haematoxylin-rich, by colour deconvolution) area survives
    # erosions of growing size, i.e. how large the nuclei are; plus the mean colour.
    optical_density = -np.log(np.maximum(pixels / 255.0, 1e-3))
    stain_matrix = np.array([[0.65, 0.70, 0.29], [0.13, 0.83, 0.54], [0.27, 0.57, 0.78]])
    haematoxylin = (optical_density @ np.linalg.inv(stain_matrix))[..., 0]
    nuclear = haematoxylin > 0.5
    texture = [mean_rgb, nuclear.mean(axis=(1, 2))[:, None]]
    for size in (3, 5, 7, 9):
        texture.append(_erode(nuclear, size).mean(axis=(1, 2))[:, None])
    texture = np.concatenate(texture, axis=1)
    texture = (texture - texture.mean(0)) / (texture.std(0) + 1e-9)
    by_texture = _balanced_accuracy_by_least_squares(texture, label, train_rows)
    print(f"balanced accuracy: mean colour {by_colour:.3f}, texture {by_texture:.3f}")
    assert by_colour < 0.65
    assert by_texture > by_colour + 0.2
