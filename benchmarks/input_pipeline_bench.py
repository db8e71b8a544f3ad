"""Input-pipeline benchmark: building and loading a prepared set, feeding rate.

Usage: python benchmarks/input_pipeline_bench.py [--data_dir /tmp/idc_bench_tfds]
       [--manual_dir ../shared/data/idc_subset]   # another Kaggle-layout source

Prints one table. Targets: loading a prepared full-size split into memory under 60 s on 2 cores;
feeding 50x50 batches of 1024 at >= 200k images/s on one core. On the real sample shipped in
data/idc_sample by default:
- prepare: the TFDS build (scan, decode and check every PNG, write array_record), or nothing;
- first load: TFDS build skipped if prepared; reading the array_record file and decoding every
  PNG (thread pool), then writing the .npy cache;
- cached load: what every later run pays: the .npy cache plus the patient split into 3 arrays;
- full-size cached load: the same on a 277,524-row table (the real set's size) made by tiling
  the prepared set, so the 2.1 GB read is measured even when only a small set was built;
- feeding: `iterate_batches` over a 277,524-row in-memory split, shuffled, batch 1024.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]

import harness  # noqa: E402
import numpy as np  # noqa: E402

import input_pipeline  # noqa: E402
from configs import default  # noqa: E402
from input_pipeline import dataset, splits  # noqa: E402

REAL_SIZE = input_pipeline.KAGGLE_PATCHES  # rows of the full-size table


def main() -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--manual_dir", default="", help="a Kaggle-layout source (default: sample)")
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "idc_bench_tfds"))
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--feed_batches", type=int, default=200)
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []

    # 1. Prepare (build if needed) and load.
    config = default.data_config(
        dataset="kaggle_idc" if args.manual_dir else "idc_sample",
        manual_dir=args.manual_dir,
        data_dir=args.data_dir,
    )
    choice, seconds = harness.timed(lambda: dataset.prepare(config))
    builder = choice.builder
    rows.append(("prepare (TFDS build or no-op)", f"{seconds:.1f} s", builder.data_dir))
    table, seconds = harness.timed(lambda: dataset.load_table(builder, use_cache=False))
    num = len(table["label"])
    rows.append(
        (
            "first load: read + decode PNGs",
            f"{seconds:.2f} s",
            f"{num / seconds:,.0f} patches/s, {num} patches",
        )
    )
    _, seconds = harness.timed(lambda: dataset.load_table(builder))  # writes the cache if absent
    _, seconds = harness.timed(lambda: input_pipeline.load_dataset(config))
    rows.append(("cached load + patient split", f"{seconds:.2f} s", f"{num} patches"))

    # 2. Full-size cached reload, from a tiled 277,524-row .npy table.
    repeats = -(-REAL_SIZE // num)
    with tempfile.TemporaryDirectory(dir=args.data_dir) as tmp:
        tiled_image = np.lib.format.open_memmap(
            os.path.join(tmp, "image.npy"),
            mode="w+",
            dtype=np.uint8,
            shape=(REAL_SIZE, 50, 50, 3),
        )
        for start in range(0, REAL_SIZE, num):
            stop = min(REAL_SIZE, start + num)
            tiled_image[start:stop] = table["image"][: stop - start]
        tiled_image.flush()
        del tiled_image
        patient = (
            np.tile(table["patient"], repeats)[:REAL_SIZE]
            + np.repeat(np.arange(repeats, dtype=np.int32) * 100_000, num)[:REAL_SIZE]
        )
        label = np.tile(table["label"], repeats)[:REAL_SIZE]

        def full_reload():
            image = np.load(os.path.join(tmp, "image.npy"), mmap_mode="r")
            parts = splits.make_splits("patient", patient, label, seed=0)
            return [np.asarray(image[rows]) for rows in (parts.train, parts.validation, parts.test)]

        parts, seconds = harness.timed(full_reload)
        rows.append(
            (
                "full-size cached load + split",
                f"{seconds:.2f} s",
                f"{REAL_SIZE} patches, {sum(p.nbytes for p in parts) / 2**30:.2f} GiB "
                "(page cache warm: just written)",
            )
        )
        train = parts[0]

    # 3. Feeding rate on one core.
    split = input_pipeline.Split(
        image=train,
        label=label[: len(train)],
        patient=np.zeros(len(train), np.int32),
        x=np.ones(len(train), np.int32),
        y=np.ones(len(train), np.int32),
        height=np.full(len(train), 50, np.int32),
        width=np.full(len(train), 50, np.int32),
        file_name=np.array([""] * len(train)),
    )
    batches = input_pipeline.iterate_batches(split, args.batch_size, seed=0, epoch=0)
    count = min(
        args.feed_batches, input_pipeline.num_batches(len(train), args.batch_size, True) - 1
    )
    next(batches)  # warm-up
    start = time.perf_counter()
    for _ in range(count):
        batch = next(batches)
    seconds = time.perf_counter() - start
    assert batch["image"].shape == (args.batch_size, 50, 50, 3)
    rows.append(
        (
            "feeding iterate_batches",
            f"{count * args.batch_size / seconds:,.0f} images/s",
            f"batch {args.batch_size}, shuffled, {len(train)}-row split, one core",
        )
    )

    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"\ninput pipeline benchmark ({choice.name}, {os.cpu_count()} CPU cores)")
    print(f"{'measure':<{width}}  {'value':>{value_width}}  notes")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {note}")


if __name__ == "__main__":
    main()
