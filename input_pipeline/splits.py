"""Split protocols: which patches go to train, validation and test.

- "patient" (default): patients, not patches, are assigned to the three splits, stratified by
  their fraction of IDC patches, so that no patient's tissue is seen in two splits (patches of one
  slide are strongly correlated; a patch-level split overstates accuracy).
- "stratified": "patient" within each stratum of whole-slide status: the whole slides (patients
  dense on their grid, `windows.whole_slide_patients`) and the scattered patients are dealt
  separately, each by positive fraction, so that every split holds its share of both kinds and
  the prevalence of IDC patches is comparable across splits. Seed 0 of it on the 245-patient
  data, 20% / 20%, is the frozen test of results/frozen_test (no choice looks at its test split).
- "leaky": "stratified", then half of every validation and test patient's patches (drawn at
  random) moved into training: the leak of the paper's random patch split, measured on the
  same patients. Its test patches are the other halves, so a patient-split run scored on those
  patches (`leaked_patches` says which they are) is the comparison without the leak.
- "published": the 84 / 29 / 49 patient lists of Janowczyk & Madabhushi (2016); the Kaggle
  release's other patients are left out and counted.
- "random_patch": the protocol of the reproduced paper, patches shuffled regardless of patient.
  Patients leak across the splits, which the notes say.

With "patient", `with_test_patients` names the test patients instead (a fold of a
cross-validation over whole slides): validation is drawn from the others as above.

Every function returns row indices into the full table (sorted ascending) and is a pure function
of its inputs and the seed.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from input_pipeline import published_splits, windows

PROTOCOLS = ("patient", "stratified", "leaky", "published", "random_patch")


@dataclasses.dataclass(frozen=True)
class SplitIndices:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    notes: tuple[str, ...] = ()


def _evenly_spaced_pick(candidates: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Picks `count` items at evenly spaced ranks (random offset) of an ordered candidate list.

    Applied to patients ordered by positive fraction, it is systematic stratified sampling: every
    part of the positive-fraction range contributes in proportion.
    """
    if count <= 0:
        return candidates[:0]
    ranks = np.floor((np.arange(count) + rng.random()) * len(candidates) / count).astype(int)
    return candidates[np.minimum(ranks, len(candidates) - 1)]


def by_patient(
    patient: np.ndarray,
    label: np.ndarray,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
) -> SplitIndices:
    """Assigns whole patients to the splits, stratified by each patient's positive fraction.

    The fractions are of patients (at least one per split when there are three or more).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    patients, inverse = np.unique(patient, return_inverse=True)
    positives = np.bincount(inverse, weights=label, minlength=len(patients))
    fraction = positives / np.bincount(inverse, minlength=len(patients))
    # Order by positive fraction; random tie-breaks so patients without IDC are shuffled.
    order = np.lexsort((rng.random(len(patients)), fraction))
    num = len(patients)
    num_test = int(round(test_fraction * num))
    num_val = int(round(validation_fraction * num))
    if num >= 3:
        num_test = max(num_test, 1) if test_fraction > 0 else 0
        num_val = max(num_val, 1) if validation_fraction > 0 else 0
    test_pos = _evenly_spaced_pick(np.arange(num), num_test, rng)
    rest = np.setdiff1d(np.arange(num), test_pos)
    val_pos = _evenly_spaced_pick(rest, num_val, rng)
    which = np.zeros(num, np.int8)  # 0 train, 1 validation, 2 test
    which[order[val_pos]] = 1
    which[order[test_pos]] = 2
    row_split = which[inverse]
    return SplitIndices(*(np.flatnonzero(row_split == k) for k in range(3)))


def by_patient_within_strata(
    patient: np.ndarray,
    label: np.ndarray,
    stratum: np.ndarray,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
    *,
    prevalence_tolerance: float = 0.03,
    max_draws: int = 100,
) -> SplitIndices:
    """`by_patient` applied to each stratum's patients apart (`stratum` is per row, one value per
    patient), the splits then joined: each stratum gives its share to every split.

    A few whole slides hold most of the patches, so one draw can leave a split's share of IDC
    patches far from the others'. Draws are therefore repeated (rerandomisation, Morgan & Rubin,
    Ann. Statist. 2012) until every non-empty split's IDC share lies within
    `prevalence_tolerance` of the whole set's: a criterion on the labels alone, decided before
    any network sees the data. The draw taken is named in the notes.
    """
    overall = float(np.mean(label)) if len(label) else 0.0
    for draw in range(max_draws):
        parts = []
        for k, value in enumerate(np.unique(stratum)):
            rows = np.flatnonzero(stratum == value)
            draw_seed = int(np.random.SeedSequence([seed, draw, k]).generate_state(1)[0])
            split = by_patient(
                patient[rows], label[rows], draw_seed, validation_fraction, test_fraction
            )
            parts.append([rows[getattr(split, name)] for name in ("train", "validation", "test")])
        indices = [np.sort(np.concatenate([p[i] for p in parts])) for i in range(3)]
        shares = [float(np.mean(label[i])) for i in indices if len(i)]
        if max(abs(share - overall) for share in shares) <= prevalence_tolerance:
            break
    else:
        raise ValueError(
            f"no draw of {max_draws} gave every split an IDC share within "
            f"{prevalence_tolerance} of the whole set's ({overall:.3f}); the data has too few "
            "patients for this split"
        )
    note = (
        f"stratified split: draw {draw} (rerandomised until every split's IDC share lies within "
        f"{prevalence_tolerance} of {overall:.3f}); strata: {len(np.unique(stratum))}"
    )
    return SplitIndices(*indices, notes=(note,))


LEAK_FRACTION = 0.5


def leak_patches(indices: SplitIndices, seed: int, fraction: float = LEAK_FRACTION) -> SplitIndices:
    """`indices` with `fraction` of the validation and of the test rows (each patient's own
    share, drawn at random) moved into train, and a note saying so."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    moved, kept = [], {}
    for name in ("validation", "test"):
        rows = getattr(indices, name)
        leak = rng.random(len(rows)) < fraction
        moved.append(rows[leak])
        kept[name] = rows[~leak]
    train = np.sort(np.concatenate([indices.train, *moved]))
    note = (
        f"leaky split: {sum(len(m) for m in moved):,} validation and test patches ({fraction:.0%} "
        "of each of their patients', at random) moved into training; patients leak"
    )
    return SplitIndices(train, kept["validation"], kept["test"], notes=(*indices.notes, note))


def published(patient: np.ndarray) -> SplitIndices:
    """The published patient lists; rows of other patients are left out and counted in notes."""
    lists = (published_splits.TRAIN, published_splits.VALIDATION, published_splits.TEST)
    indices = [np.flatnonzero(np.isin(patient, ids)) for ids in lists]
    listed = np.isin(patient, np.concatenate([np.asarray(ids) for ids in lists]))
    outside = np.unique(patient[~listed])
    notes = []
    if len(outside):
        notes.append(
            f"{len(outside)} patients ({int((~listed).sum())} patches) outside the published lists "
            "left out"
        )
    present = [len(np.unique(patient[i])) for i in indices]
    notes.append(
        "published lists present: train {}/84, validation {}/29, test {}/49 patients".format(
            *present
        )
    )
    return SplitIndices(*indices, notes=tuple(notes))


def by_random_patch(
    patient: np.ndarray,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
) -> SplitIndices:
    """Shuffles patches regardless of patient (the reproduced paper's protocol)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))
    num = len(patient)
    order = rng.permutation(num)
    num_test = int(round(test_fraction * num))
    num_val = int(round(validation_fraction * num))
    test = np.sort(order[:num_test])
    validation = np.sort(order[num_test : num_test + num_val])
    train = np.sort(order[num_test + num_val :])
    splits_of_patient: dict[int, int] = {}
    for split_rows in (train, validation, test):
        for p in np.unique(patient[split_rows]):
            splits_of_patient[int(p)] = splits_of_patient.get(int(p), 0) + 1
    leaking = sum(1 for n in splits_of_patient.values() if n > 1)
    note = (
        f"patients leak across splits: {leaking} of {len(splits_of_patient)} patients have "
        "patches in more than one split (random_patch protocol)"
    )
    logging.warning(note)
    return SplitIndices(train, validation, test, notes=(note,))


def fewer_training_patients(
    patient: np.ndarray, label: np.ndarray, train: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, str]:
    """Rows of `train` of a stratified `fraction` of its patients, and a note saying so.

    For learning curves: validation and test stay as they are, the shares are nested (the
    patients of a smaller share are among those of every larger one, so a curve compares more
    data, not other patients), and the kept patients span the range of positive fractions, so
    that a quarter of the patients is a quarter of every kind of patient.

    How: patients ordered by positive fraction (random tie-breaks) get the priorities
    (u + rank * g) mod 1 of a Weyl sequence (g the golden ratio's conjugate, u a random offset),
    which are spread evenly over any run of consecutive ranks; a share keeps the patients of
    lowest priority, so every share is a stratified sample and contains the smaller ones.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.train_patients_fraction must lie in (0, 1], got {fraction}")
    patients, inverse = np.unique(patient[train], return_inverse=True)
    if fraction == 1.0:
        return train, ""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 9]))
    positives = np.bincount(inverse, weights=label[train], minlength=len(patients))
    positive_fraction = positives / np.bincount(inverse, minlength=len(patients))
    order = np.lexsort((rng.random(len(patients)), positive_fraction))
    priority = np.empty(len(patients))
    priority[order] = (rng.random() + np.arange(len(patients)) * (np.sqrt(5.0) - 1) / 2) % 1.0
    count = max(1, int(round(fraction * len(patients))))
    kept = np.argsort(priority, kind="stable")[:count]
    rows = train[np.isin(inverse, kept)]
    note = (
        f"training on {count} of {len(patients)} training patients ({len(rows)} of {len(train)} "
        f"patches; data.train_patients_fraction={fraction})"
    )
    return rows, note


def with_test_patients(
    patient: np.ndarray,
    label: np.ndarray,
    test_patients: np.ndarray,
    seed: int,
    validation_fraction: float,
) -> SplitIndices:
    """The named patients are the test split; the others go to train and validation by patient.

    `validation_fraction` is of the patients that are not named. Raises ValueError naming the
    patients that are not in the data.
    """
    test_patients = np.unique(np.asarray(test_patients, dtype=patient.dtype))
    missing = np.setdiff1d(test_patients, patient)
    if len(missing):
        raise ValueError(
            f"data.test_patients names {len(missing)} patients that are not in the data: "
            + ", ".join(str(p) for p in missing[:10])
        )
    named = np.isin(patient, test_patients)
    rest = np.flatnonzero(~named)
    parts = by_patient(patient[rest], label[rest], seed, validation_fraction, test_fraction=0.0)
    note = f"test split: the {len(test_patients)} patients of data.test_patients"
    return SplitIndices(
        rest[parts.train], rest[parts.validation], np.flatnonzero(named), notes=(note,)
    )


def parse_patients(text: str) -> np.ndarray:
    """'8863, 8914 9022' -> [8863, 8914, 9022]; raises ValueError on anything but integers."""
    words = text.replace(",", " ").split()
    if not all(word.isdigit() for word in words):
        raise ValueError(
            f"data.test_patients must be patient ids separated by commas, got {text!r}"
        )
    return np.asarray([int(word) for word in words], np.int64)


def make_splits(
    protocol: str,
    patient: np.ndarray,
    label: np.ndarray,
    seed: int = 0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    test_patients: str = "",
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
) -> SplitIndices:
    """Dispatches to the protocol named in the config (`config.data.split`).

    "stratified" needs each patch's grid position (`x`, `y`) to tell whole slides apart."""
    if test_patients.strip():
        if protocol != "patient":
            raise ValueError(f"data.test_patients needs data.split='patient', not {protocol!r}")
        return with_test_patients(
            patient, label, parse_patients(test_patients), seed, validation_fraction
        )
    if protocol == "patient":
        return by_patient(patient, label, seed, validation_fraction, test_fraction)
    if protocol in ("stratified", "leaky"):
        if x is None or y is None:
            raise ValueError(f"the {protocol!r} split needs the patches' x and y")
        stratum = np.isin(patient, windows.whole_slide_patients(patient, x, y))
        indices = by_patient_within_strata(
            patient, label, stratum.astype(np.int64), seed, validation_fraction, test_fraction
        )
        return leak_patches(indices, seed) if protocol == "leaky" else indices
    if protocol == "published":
        return published(patient)
    if protocol == "random_patch":
        return by_random_patch(patient, seed, validation_fraction, test_fraction)
    raise ValueError(f"unknown split protocol {protocol!r}; expected one of {PROTOCOLS}")
