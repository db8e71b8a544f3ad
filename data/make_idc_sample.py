"""How data/idc_sample was drawn from the real subset (run once; kept to document the sample).

    python data/make_idc_sample.py ../shared/data/idc_subset/IDC_regular_ps50_idx5.zip

The subset (15,718 real patches of 245 patients of the Kaggle set, CC0) is what every model
choice of this project is made on. Its default patient split (`input_pipeline.splits.by_patient`,
seed 0, 15% / 15%) puts 171 patients in train, 37 in validation and 37 in test. The sample takes
only the 171 training patients, so that the subset's validation and test patients stay unseen
by anything tuned on the sample, and from each of them at most `PER_PATIENT` patches, half of
them IDC where the patient has enough (class-balanced, so that 5 short epochs see as many
positives as negatives), drawn at random with a fixed seed. PNG files are copied byte for byte.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import shutil
import sys
import tempfile
import zipfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from input_pipeline import splits  # noqa: E402
from input_pipeline.patches import FILE_NAME_PATTERN  # noqa: E402

PER_PATIENT = 22
IDC_FRACTION = 0.5
SEED = 0


def subset_patches(archive: zipfile.ZipFile) -> dict[int, tuple[list[str], list[str]]]:
    """patient -> (negative members, positive members) of the subset zip, sorted by name."""
    by_patient: dict[int, tuple[list[str], list[str]]] = {}
    for member in sorted(archive.namelist()):
        match = FILE_NAME_PATTERN.match(member.rsplit("/", 1)[-1])
        if match:
            patient, label = int(match.group(1)), int(match.group(4))
            by_patient.setdefault(patient, ([], []))[label].append(member)
    return by_patient


def training_patients(by_patient) -> list[int]:
    """The patients the subset's default patient split puts in train."""
    patient = np.concatenate([[p] * (len(n) + len(q)) for p, (n, q) in by_patient.items()])
    label = np.concatenate([[0] * len(n) + [1] * len(q) for n, q in by_patient.values()])
    indices = splits.by_patient(patient, label, 0, validation_fraction=0.15, test_fraction=0.15)
    return sorted(int(p) for p in np.unique(patient[indices.train]))


def draw(negatives: list[str], positives: list[str], rng: random.Random) -> list[str]:
    """At most PER_PATIENT patches, IDC_FRACTION of them IDC where the patient has enough."""
    total = min(PER_PATIENT, len(negatives) + len(positives))
    wanted_positive = min(len(positives), round(total * IDC_FRACTION))
    num_negative = min(len(negatives), total - wanted_positive)
    num_positive = min(len(positives), total - num_negative)
    return rng.sample(positives, num_positive) + rng.sample(negatives, num_negative)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subset_zip", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "data" / "idc_sample")
    args = parser.parse_args()
    rng = random.Random(SEED)
    with zipfile.ZipFile(args.subset_zip) as archive, tempfile.TemporaryDirectory() as tmp:
        by_patient = subset_patches(archive)
        staging = pathlib.Path(tmp) / "idc_sample"
        count = 0
        for patient in training_patients(by_patient):
            for member in draw(*by_patient[patient], rng):
                name = member.rsplit("/", 1)[-1]
                target = staging / str(patient) / FILE_NAME_PATTERN.match(name).group(4) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
                count += 1
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(staging, args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*.png"))
    print(f"wrote {count} patches, {size / 1e6:.1f} MB, to {args.out}")


if __name__ == "__main__":
    main()
