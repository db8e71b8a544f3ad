"""The Kaggle grid's windows (input_pipeline/windows.py) against naive references, the split that
carries them into batches, and the stratified split protocol."""

import numpy as np
import pytest

import input_pipeline
from input_pipeline import splits, windows
from input_pipeline.dataset import Split
from input_pipeline.patches import WHITE


def _grid_table(rng, patients=3, cells=60, side=12):
    """Patches of a few patients on random distinct cells of a side x side grid."""
    patient, x, y = [], [], []
    for p in range(patients):
        chosen = rng.choice(side * side, size=cells, replace=False)
        rows, cols = np.divmod(chosen, side)
        patient += [100 + p] * cells
        x += list(cols * 50 + 1)
        y += list(rows * 50 + 1)
    order = rng.permutation(len(patient))
    return (np.asarray(patient)[order], np.asarray(x)[order], np.asarray(y)[order])


def _naive_window_rows(patient, x, y, size):
    where = {(p, xx, yy): i for i, (p, xx, yy) in enumerate(zip(patient, x, y))}
    half = size // 2
    out = []
    for p, xx, yy in zip(patient, x, y):
        out.append(
            [
                where.get((p, xx + 50 * dc, yy + 50 * dr), -1)
                for dr in range(-half, half + 1)
                for dc in range(-half, half + 1)
            ]
        )
    return np.asarray(out)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_window_rows_equal_a_naive_lookup(size):
    patient, x, y = _grid_table(np.random.default_rng(size))
    got = windows.window_rows(patient, x, y, size)
    np.testing.assert_array_equal(got, _naive_window_rows(patient, x, y, size))
    assert (got[:, size * size // 2] == np.arange(len(patient))).all()  # the centre is itself


def test_windows_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        windows.window_offsets(2)


def test_assembled_windows_put_each_patch_at_its_place_and_white_elsewhere():
    rng = np.random.default_rng(0)
    patient, x, y = _grid_table(rng, patients=2, cells=40, side=9)
    images = rng.integers(0, 255, (len(patient), 50, 50, 3), dtype=np.uint8)
    rows = windows.window_rows(patient, x, y, 3)
    got = windows.assemble_windows(images, rows)
    assert got.shape == (len(patient), 150, 150, 3)
    for i in range(len(patient)):
        for cell in range(9):
            r, c = divmod(cell, 3)
            block = got[i, 50 * r : 50 * r + 50, 50 * c : 50 * c + 50]
            expected = images[rows[i, cell]] if rows[i, cell] >= 0 else WHITE
            np.testing.assert_array_equal(block, np.broadcast_to(expected, block.shape))


def test_neighbour_fraction_equals_a_set_lookup():
    patient, x, y = _grid_table(np.random.default_rng(4), patients=3, cells=50, side=10)
    rows, cols = windows.grid_cells(x, y)
    cells = set(zip(patient.tolist(), rows.tolist(), cols.tolist()))
    naive = [
        sum((p, r + dr, c + dc) in cells for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))) / 4
        for p, r, c in zip(patient.tolist(), rows.tolist(), cols.tolist())
    ]
    np.testing.assert_allclose(windows.neighbour_fraction(rows, cols, patient), naive)


def _split(patient, x, y, rng):
    n = len(patient)
    return Split(
        image=rng.integers(0, 255, (n, 50, 50, 3), dtype=np.uint8),
        label=rng.integers(0, 2, n).astype(np.int32),
        patient=patient.astype(np.int32),
        x=x.astype(np.int32),
        y=y.astype(np.int32),
        height=np.full(n, 50, np.int32),
        width=np.full(n, 50, np.int32),
        file_name=np.array([f"f{i}" for i in range(n)]),
    )


def test_batches_of_a_windowed_split_are_its_windows_and_a_take_drops_them():
    rng = np.random.default_rng(1)
    split = _split(*_grid_table(rng, patients=2, cells=30, side=8), rng)
    windowed = split.with_windows(3)
    batch = next(input_pipeline.iterate_batches(windowed, 16, shuffle=False))
    expected = windows.assemble_windows(
        split.image, windows.window_rows(split.patient, split.x, split.y, 3)[:16]
    )
    np.testing.assert_array_equal(batch["image"], expected)
    np.testing.assert_array_equal(batch["image"][:, 50:100, 50:100], split.image[:16])
    assert windowed.take(np.arange(5)).windows is None
    assert split.with_windows(1).images(np.arange(3)).shape == (3, 50, 50, 3)


def _two_kinds_of_patients(rng):
    """20 dense patients (whole slides, 30-150 patches) and 60 scattered ones (2-20 patches)."""
    patient, x, y, label = [], [], [], []
    for p in range(80):
        dense = p < 20
        side = 14
        count = rng.integers(30, 150) if dense else rng.integers(2, 20)
        cells = np.arange(count) if dense else rng.choice(side * side * 4, count, replace=False)
        width = side if dense else side * 2
        rows, cols = np.divmod(cells, width)
        share = rng.uniform(0, 0.6)
        patient += [p] * count
        x += list(cols * 50 + 1)
        y += list(rows * 50 + 1)
        label += list((rng.random(count) < share).astype(int))
    return (np.asarray(v) for v in (patient, x, y, label))


def test_the_stratified_split_deals_whole_slides_apart_and_balances_prevalence():
    patient, x, y, label = _two_kinds_of_patients(np.random.default_rng(7))
    whole = windows.whole_slide_patients(patient, x, y)
    np.testing.assert_array_equal(whole, np.arange(20))
    result = splits.make_splits("stratified", patient, label, 0, 0.2, 0.2, x=x, y=y)
    parts = [result.train, result.validation, result.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(patient)))
    kinds = []
    for rows in parts:
        mine = np.unique(patient[rows])
        kinds.append((np.isin(mine, whole).sum(), (~np.isin(mine, whole)).sum()))
        assert abs(label[rows].mean() - label.mean()) <= 0.03
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(patient[parts[a]]) & set(patient[parts[b]])
    assert kinds[1] == kinds[2] == (4, 12)  # 20% of each kind
    again = splits.make_splits("stratified", patient, label, 0, 0.2, 0.2, x=x, y=y)
    np.testing.assert_array_equal(again.test, result.test)
    assert "draw" in result.notes[0]


def test_the_stratified_split_says_when_no_draw_balances():
    patient, x, y, label = _two_kinds_of_patients(np.random.default_rng(7))
    stratum = np.isin(patient, windows.whole_slide_patients(patient, x, y)).astype(int)
    with pytest.raises(ValueError, match="no draw of 3"):
        splits.by_patient_within_strata(
            patient, label, stratum, 0, 0.2, 0.2, prevalence_tolerance=1e-6, max_draws=3
        )


def test_the_leaky_split_moves_half_of_each_held_out_patient_into_training():
    patient, x, y, label = _two_kinds_of_patients(np.random.default_rng(7))
    honest = splits.make_splits("stratified", patient, label, 0, 0.2, 0.2, x=x, y=y)
    leaky = splits.make_splits("leaky", patient, label, 0, 0.2, 0.2, x=x, y=y)
    everything = np.sort(np.concatenate([leaky.train, leaky.validation, leaky.test]))
    np.testing.assert_array_equal(everything, np.arange(len(patient)))
    for name in ("validation", "test"):
        kept, held = getattr(leaky, name), getattr(honest, name)
        assert set(kept) <= set(held)  # the same patients, half of their patches
        moved = np.setdiff1d(held, kept)
        assert set(moved) <= set(leaky.train)
        assert 0.4 < len(moved) / len(held) < 0.6
        # every held-out patient with a few patches leaks into training
        big = [p for p in np.unique(patient[held]) if (patient[held] == p).sum() >= 20]
        assert all(p in set(patient[leaky.train]) for p in big)
    assert "patients leak" in leaky.notes[-1]
