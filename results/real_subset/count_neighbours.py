"""How many test patches have a training patch of the same patient right beside them.

The number behind the leakage paragraph of README.md: for each split protocol, the test patches
with a training patch of the same patient in one of the 8 neighbouring positions of the 50-pixel
grid (the coordinates come from the Kaggle file names).

    python results/real_subset/count_neighbours.py --manual_dir=../shared/data/idc_subset
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from configs import default  # noqa: E402
from input_pipeline import dataset  # noqa: E402

NEIGHBOURS = [(dx, dy) for dx in (-50, 0, 50) for dy in (-50, 0, 50) if dx or dy]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual_dir", required=True)
    parser.add_argument("--data_dir", default="")
    args = parser.parse_args()
    for protocol in ("random_patch", "patient"):
        config = default.data_config(
            dataset="kaggle_idc", manual_dir=args.manual_dir, data_dir=args.data_dir, split=protocol
        )
        splits = dataset.load_dataset(config)
        train = set(zip(*(getattr(splits.train, k).tolist() for k in ("patient", "x", "y"))))
        test = splits.test
        beside = sum(
            any((patient, x + dx, y + dy) in train for dx, dy in NEIGHBOURS)
            for patient, x, y in zip(test.patient.tolist(), test.x.tolist(), test.y.tolist())
        )
        print(
            f"{protocol}: {beside} of {len(test)} test patches ({beside / len(test):.1%}) have a "
            "training patch of the same patient in a neighbouring position"
        )


if __name__ == "__main__":
    main()
