"""Split protocols: disjoint, deterministic, stratified; the published lists are the shared ones."""

import numpy as np
import pytest

from input_pipeline import published_splits, splits


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    patients = np.arange(100, 160)
    counts = rng.integers(20, 80, len(patients))
    patient = np.repeat(patients, counts)
    fraction = np.repeat(rng.uniform(0, 0.6, len(patients)), counts)
    label = (rng.random(len(patient)) < fraction).astype(np.int32)
    return patient, label


def test_published_lists_equal_the_shared_files(published_splits_dir):
    for name, ids in [
        ("train", published_splits.TRAIN),
        ("val", published_splits.VALIDATION),
        ("test", published_splits.TEST),
    ]:
        lines = (published_splits_dir / f"cases_{name}.txt").read_text().split()
        assert list(ids) == [int(v) for v in lines]
    assert (
        len(published_splits.TRAIN),
        len(published_splits.VALIDATION),
        len(published_splits.TEST),
    ) == (84, 29, 49)


def test_patient_split_is_disjoint_complete_and_deterministic(table):
    patient, label = table
    a = splits.make_splits("patient", patient, label, seed=1)
    b = splits.make_splits("patient", patient, label, seed=1)
    c = splits.make_splits("patient", patient, label, seed=2)
    groups = [set(patient[rows].tolist()) for rows in (a.train, a.validation, a.test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    all_rows = np.concatenate([a.train, a.validation, a.test])
    np.testing.assert_array_equal(np.sort(all_rows), np.arange(len(patient)))
    assert [len(g) for g in groups] == [42, 9, 9]  # 15% of 60 patients each
    for x, y in zip((a.train, a.validation, a.test), (b.train, b.validation, b.test)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.test, c.test)


def test_patient_split_is_stratified_by_positive_fraction(table):
    patient, label = table
    patients = np.unique(patient)
    fraction = np.array([label[patient == p].mean() for p in patients])
    result = splits.make_splits("patient", patient, label, seed=0)
    test_patients = np.unique(patient[result.test])
    # Systematic sampling over the sorted fractions: one test patient in each 1/9 of the range.
    ranks = np.searchsorted(np.sort(fraction), fraction[np.isin(patients, test_patients)])
    assert sorted(ranks // (len(patients) / 9)) == list(range(9))


def test_published_protocol_leaves_out_and_counts_others():
    listed = [published_splits.TRAIN[0], published_splits.VALIDATION[0], published_splits.TEST[0]]
    patient = np.array(listed * 3 + [8863, 8863], np.int32)
    label = np.zeros(len(patient), np.int32)
    result = splits.make_splits("published", patient, label)
    assert set(patient[result.train]) == {listed[0]}
    assert set(patient[result.validation]) == {listed[1]}
    assert set(patient[result.test]) == {listed[2]}
    assert any("1 patients (2 patches) outside the published lists" in n for n in result.notes)


def test_random_patch_split_notes_the_leak(table):
    patient, label = table
    result = splits.make_splits("random_patch", patient, label, seed=0)
    sizes = [len(result.train), len(result.validation), len(result.test)]
    assert sum(sizes) == len(patient)
    assert sizes[2] == round(0.15 * len(patient))
    assert len(np.intersect1d(result.train, result.test)) == 0
    assert any("patients leak across splits" in n for n in result.notes)


def test_named_test_patients_are_the_test_split_and_the_rest_split_by_patient(table):
    patient, label = table
    named = "101, 117,150 103"
    parts = splits.make_splits("patient", patient, label, seed=3, test_patients=named)
    assert set(patient[parts.test].tolist()) == {101, 103, 117, 150}
    np.testing.assert_array_equal(
        parts.test, np.flatnonzero(np.isin(patient, [101, 103, 117, 150]))
    )
    train, validation = set(patient[parts.train].tolist()), set(patient[parts.validation].tolist())
    assert not train & validation and not (train | validation) & {101, 103, 117, 150}
    assert len(train) + len(validation) == 56 and len(validation) == 8  # 15% of the other 56
    all_rows = np.concatenate([parts.train, parts.validation, parts.test])
    np.testing.assert_array_equal(np.sort(all_rows), np.arange(len(patient)))


def test_named_test_patients_must_be_in_the_data_and_need_the_patient_protocol(table):
    patient, label = table
    with pytest.raises(ValueError, match="2 patients that are not in the data: 7, 99999"):
        splits.make_splits("patient", patient, label, test_patients="101,7,99999")
    with pytest.raises(ValueError, match="needs data.split='patient'"):
        splits.make_splits("published", patient, label, test_patients="101")
    with pytest.raises(ValueError, match="patient ids separated by commas"):
        splits.make_splits("patient", patient, label, test_patients="101;x")


def test_unknown_protocol_is_an_error(table):
    with pytest.raises(ValueError, match="unknown split protocol"):
        splits.make_splits("by_slide", *table)


def test_fewer_training_patients_keeps_a_stratified_share_of_whole_patients():
    rng = np.random.default_rng(3)
    patient = np.repeat(np.arange(40), 10)
    # Patient p has round(p / 4) IDC patches of 10: positive fractions from 0 to 1.
    label = np.concatenate([(np.arange(10) < round(p / 4)).astype(np.int32) for p in range(40)])
    train = np.sort(rng.choice(len(patient), 300, replace=False))
    train = np.flatnonzero(np.isin(patient, np.unique(patient[train])))
    rows, note = splits.fewer_training_patients(patient, label, train, 0.25, seed=0)
    kept = np.unique(patient[rows])
    assert len(kept) == round(0.25 * len(np.unique(patient[train])))
    # Whole patients: every training row of a kept patient, and none of the others.
    np.testing.assert_array_equal(rows, train[np.isin(patient[train], kept)])
    # Stratified: the kept patients' positive fractions span the training patients' range.
    fraction = np.array([label[patient == p].mean() for p in kept])
    assert fraction.min() <= 0.2 and fraction.max() >= 0.8
    assert "of 40 training patients" in note
    # Nested: every smaller share's patients are among a larger share's.
    shares = [
        set(patient[splits.fewer_training_patients(patient, label, train, f, seed=0)[0]].tolist())
        for f in (0.1, 0.25, 0.5, 0.75)
    ]
    assert all(small <= large for small, large in zip(shares, shares[1:]))
    assert splits.fewer_training_patients(patient, label, train, 1.0, seed=0) == (train, "")
    with pytest.raises(ValueError, match="train_patients_fraction"):
        splits.fewer_training_patients(patient, label, train, 0.0, seed=0)
