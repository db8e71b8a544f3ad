"""Input-pipeline benchmark: synthetic generation, loading a prepared split, feeding rate.

Usage: python benchmarks/input_pipeline_bench.py --size small [--data_dir /tmp/idc_bench_tfds]

Prints one table. Issue targets: loading a prepared full-size split into memory under 60 s on
2 cores; feeding 50x50 batches of 1024 at >= 200k images/s on one core.
- generation: `synthetic.generate` patches/s (pure numpy, one process);
- first load: TFDS build skipped if prepared; reading the array_record file and decoding every
  PNG (thread pool), then writing the .npy cache;
- cached load: what every later run pays: the .npy cache plus the patient split into 3 arrays;
- full-size cached load: the same on a 277,524-row table (the real set's size) made by tiling
  the prepared set, so the 2.1 GB read is measured even when only a small set was built;
- feeding: `iterate_batches` over a 277,524-row in-memory split, shuffled, batch 1024.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import input_pipeline  # noqa: E402
from configs import default  # noqa: E402
from input_pipeline import dataset, splits, synthetic  # noqa: E402

REAL_SIZE = synthetic.REAL_NUM_PATCHES


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=sorted(synthetic.SIZES))
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "idc_bench_tfds"))
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--feed_batches", type=int, default=200)
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    spec = synthetic.SIZES[args.size]

    # 1. Synthetic generation rate (capped so that "full" does not take minutes here).
    gen_patches = min(spec.num_patches, 20_000)
    gen_patients = max(1, min(spec.num_patients, gen_patches // 100))
    _, seconds = _timed(lambda: synthetic.generate(gen_patients, gen_patches, seed=1))
    rate = gen_patches / seconds
    rows.append(
        (
            "synthetic generation",
            f"{rate:,.0f} patches/s",
            f"{gen_patches} patches; full set extrapolated {REAL_SIZE / rate / 60:.1f} min",
        )
    )

    # 2. Prepare (build if needed) and load.
    config = default.data_config(
        dataset="synthetic_idc", synthetic_size=args.size, data_dir=args.data_dir
    )
    builder, seconds = _timed(lambda: dataset.prepare(config))
    rows.append(("prepare (TFDS build or no-op)", f"{seconds:.1f} s", builder.data_dir))
    table, seconds = _timed(lambda: dataset.load_table(builder, use_cache=False))
    num = len(table["label"])
    rows.append(
        (
            "first load: read + decode PNGs",
            f"{seconds:.2f} s",
            f"{num / seconds:,.0f} patches/s, {num} patches",
        )
    )
    _, seconds = _timed(lambda: dataset.load_table(builder))  # writes the cache if absent
    _, seconds = _timed(lambda: input_pipeline.load_dataset(config))
    rows.append(("cached load + patient split", f"{seconds:.2f} s", f"{num} patches"))

    # 3. Full-size cached reload, from a tiled 277,524-row .npy table.
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

        parts, seconds = _timed(full_reload)
        rows.append(
            (
                "full-size cached load + split",
                f"{seconds:.2f} s",
                f"{REAL_SIZE} patches, {sum(p.nbytes for p in parts) / 2**30:.2f} GiB "
                "(page cache warm: just written)",
            )
        )
        train = parts[0]

    # 4. Feeding rate on one core.
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
    print(f"\ninput pipeline benchmark (size={args.size}, {os.cpu_count()} CPU cores)")
    print(f"{'measure':<{width}}  {'value':>{value_width}}  notes")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {note}")


if __name__ == "__main__":
    main()
