"""Slide inference against predict.py on the same patches, and its peak memory against slide size.

    python benchmarks/slide_inference.py                  # the shipped model, one view, batch 256
    python benchmarks/slide_inference.py --rounds=5 --tta --out=/tmp/slide_inference.json

Throughput (one process, the model compiled once): the 495 real patches of patient 8955
(data/demo_slide/8955/) through `patch_files.predict_files`, which is what predict.py runs (PNG
decoding in 8 threads), and the same 495 patches as tiles of data/demo_slide/8955.tiff through
`slide_maps.predict_slide_tiles`, which is what map_slide.py runs (OpenSlide reads in 4 threads);
each measurement predicts them `--repeat` times (4: 1,980 images), the two alternated (A B, then
B A) for `--rounds` rounds after one warm-up; medians of images/s and of their ratio; then
each source's reading rate alone, without the network. Then the whole
`map_slide` of the slide (thumbnail, tissue, tiles, the four output files) in tissue tiles/s.
Both sides exclude compilation, as the programs report it.

Memory: `map_slide` of the demo slide (2,900 x 1,950 px) and of a 16 times larger one (4 x 4
copies side by side, 11,600 x 7,800 px, written by data/make_demo_slide.py --copies=4), each in a
fresh process, and a process that only loads and compiles the model (the baseline); peak resident
memory (ru_maxrss) of each. A slide is read tile by tile and its thumbnail band by band, so the
peak should not grow with the slide.

Writes the JSON (default benchmarks/results/slide_inference.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402

DEMO_DIR = REPO / "data" / "demo_slide"
DEMO_SLIDE = DEMO_DIR / "8955.tiff"
DEMO_PATCHES = DEMO_DIR / "8955"


def peak_rss_mib() -> float:
    """The process's peak resident memory: VmHWM (resettable, below), else ru_maxrss."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0: `echo 5 > /proc/self/clear_refs`), so
    that the peak of what follows is measured apart from the model's compilation."""
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_model(args):
    import idc_inference

    return idc_inference.load(args.workdir, tta=args.tta, batch_size=args.batch_size)


def child(args) -> None:
    """One memory measurement in this fresh process: load, compile, map `--child` (or not)."""
    import gc

    model = load_model(args)
    gc.collect()
    record = {"slide": args.child, "peak_rss_mib_loading_and_compiling": peak_rss_mib()}
    record["peak_reset"] = reset_peak_rss()
    record["rss_mib_before_map"] = peak_rss_mib()
    if args.child != "none":
        from idc_inference import slide_maps

        with tempfile.TemporaryDirectory() as out:
            summary = slide_maps.map_slide(
                args.child,
                out,
                model.predictor,
                model=model.describe(),
                threshold=model.threshold,
                num_threads=4,
            )
        record.update(
            dimensions=summary["slide"]["dimensions"],
            tissue_tiles=summary["tiles"]["tissue"],
            tiles_per_second=summary["throughput"]["tiles_per_second"],
            seconds_total=summary["seconds_total"],
        )
    record["peak_rss_mib"] = peak_rss_mib()  # since the reset: the map's own peak
    print("RESULT " + json.dumps(record))


def run_child(args, slide: str) -> dict:
    command = [
        sys.executable,
        __file__,
        f"--child={slide}",
        f"--batch_size={args.batch_size}",
        *(["--tta"] if args.tta else []),
        *([f"--workdir={args.workdir}"] if args.workdir else []),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def throughput(args, model) -> dict:
    import numpy as np

    from idc_inference import patch_files, slide_files, slide_maps
    from input_pipeline.patches import find_png_files

    files, _ = find_png_files([DEMO_PATCHES])
    files = files * args.repeat
    slide = slide_files.open_slide(DEMO_SLIDE)
    names = patch_files.predict_files(None, files[: len(files) // args.repeat]).names
    left = np.tile(np.array([n.x - 1 for n in names], float), args.repeat)
    top = np.tile(np.array([n.y - 1 for n in names], float), args.repeat)

    def png_rate() -> float:
        return patch_files.predict_files(model.predictor, files, num_threads=8).images_per_second

    def slide_rate() -> float:
        result, _, _ = slide_maps.predict_slide_tiles(
            slide, model.predictor, left, top, num_threads=4
        )
        return result.images_per_second

    png_rate(), slide_rate()  # warm-up: caches, first executions
    png_rates, slide_rates, ratios = [], [], []
    for round_index in range(1, args.rounds + 1):
        # A B, then B A: a drift in the machine's load biases neither side.
        if round_index % 2:
            png, tile = png_rate(), slide_rate()
        else:
            tile, png = slide_rate(), png_rate()
        png_rates.append(png)
        slide_rates.append(tile)
        ratios.append(tile / png)
        print(
            f"round {round_index}: predict_files {png:.1f} images/s, slide tiles {tile:.1f} "
            f"images/s ({ratios[-1]:.3f}x), load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    reading = {}
    for _ in range(2):  # reading alone, no network: what the sources can deliver
        pngs = patch_files.predict_files(None, files, num_threads=8)
        tiles, _, _ = slide_maps.predict_slide_tiles(slide, None, left, top, num_threads=4)
        reading = {
            "predict_files_reading_images_per_second": pngs.images_per_second,
            "slide_tiles_reading_images_per_second": tiles.images_per_second,
        }
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = slide_maps.map_slide(
            slide, out, model.predictor, model=model.describe(), threshold=model.threshold
        )
        map_seconds = time.perf_counter() - start
    return {
        "patches": len(files) // args.repeat,
        "repeat": args.repeat,
        "predict_files_images_per_second": png_rates,
        "slide_tiles_images_per_second": slide_rates,
        "ratio_slide_over_predict_files": ratios,
        "median_predict_files": statistics.median(png_rates),
        "median_slide_tiles": statistics.median(slide_rates),
        "median_ratio": statistics.median(ratios),
        **reading,
        "map_slide": {
            "tissue_tiles": summary["tiles"]["tissue"],
            "tiles_per_second_streaming": summary["throughput"]["tiles_per_second"],
            "seconds_total": map_seconds,
            "tiles_per_second_total": summary["tiles"]["tissue"] / map_seconds,
        },
    }


def main() -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--workdir", default=None, help="A run or weights file; default: shipped.")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="8-view TTA (predict.py's default for the shipped model); default: one view.",
    )
    parser.add_argument("--batch_size", type=int, default=256, help="As predict.py's default.")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--repeat", type=int, default=4, help="Each measurement predicts the 495 patches N times."
    )
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument(
        "--copies",
        default="4",
        help="Larger slides for the memory runs: N x N copies each (4: 16x; '4,8': 16x, 64x).",
    )
    parser.add_argument("--out", default=str(harness.RESULTS_DIR / "slide_inference.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.child is not None:
        child(args)
        return

    meta = harness.host_meta()
    meta["versions"] = harness.versions(["jax", "jaxlib", "openslide-python", "openslide-bin"])
    model = load_model(args)
    meta["model"] = model.describe()
    meta["compile_seconds"] = model.predictor.compile_seconds
    results = {"meta": meta, "throughput": throughput(args, model)}
    del model

    if not args.skip_memory:
        sys.path.insert(0, str(REPO / "data"))
        import make_demo_slide

        with tempfile.TemporaryDirectory() as folder:
            results["memory"] = {
                "model_only": run_child(args, "none"),
                "demo_slide": run_child(args, str(DEMO_SLIDE)),
            }
            for copies in (int(c) for c in args.copies.split(",") if c):
                large = pathlib.Path(folder) / f"8955_{copies}x{copies}_copies.tiff"
                make_demo_slide.write_demo_slide(
                    DEMO_PATCHES, large, copies=copies, compression_level=1
                )
                name = f"{copies * copies}x_larger"
                results["memory"][name] = run_child(args, str(large))
                results["memory"][name]["file_bytes"] = large.stat().st_size
                large.unlink()
        results["memory"]["demo_slide"]["file_bytes"] = DEMO_SLIDE.stat().st_size
    harness.write_results(results, args.out, markdown(results))


def markdown(results: dict) -> str:
    t = results["throughput"]
    lines = [
        "| what | images/s (median) | per round |",
        "|---|---|---|",
        f"| predict.py's path: the 495 PNGs x {t['repeat']}, `predict_files` | "
        f"{t['median_predict_files']:.1f} | "
        + ", ".join(f"{x:.1f}" for x in t["predict_files_images_per_second"])
        + " |",
        f"| map_slide.py's path: the same patches as tiles of the slide | "
        f"{t['median_slide_tiles']:.1f} | "
        + ", ".join(f"{x:.1f}" for x in t["slide_tiles_images_per_second"])
        + " |",
        f"| ratio slide / PNG | **{t['median_ratio']:.3f}** | "
        + ", ".join(f"{x:.3f}" for x in t["ratio_slide_over_predict_files"])
        + " |",
        f"| reading alone, no network: PNGs / slide tiles | "
        f"{t['predict_files_reading_images_per_second']:.0f} / "
        f"{t['slide_tiles_reading_images_per_second']:.0f} | |",
        f"| whole `map_slide` (thumbnail, tissue, {t['map_slide']['tissue_tiles']} tiles, "
        f"outputs) | {t['map_slide']['tiles_per_second_total']:.1f} tiles/s | "
        f"{t['map_slide']['seconds_total']:.2f} s |",
    ]
    memory = results.get("memory")
    if memory:
        lines += [
            "",
            "| process | slide (px) | tissue tiles | RSS before the map (MiB) | peak RSS "
            "during the map (MiB) |",
            "|---|---|---|---|---|",
            f"| load + compile the model only (peak "
            f"{memory['model_only']['peak_rss_mib_loading_and_compiling']:.0f} MiB) | | | "
            f"{memory['model_only']['rss_mib_before_map']:.0f} | |",
        ]
        for name, m in memory.items():
            if name == "model_only":
                continue
            w, h = m["dimensions"]
            lines.append(
                f"| map `{name}` ({m['file_bytes'] / 1e6:.1f} MB) | {w:,} x {h:,} | "
                f"{m['tissue_tiles']:,} | {m['rss_mib_before_map']:.0f} | "
                f"{m['peak_rss_mib']:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
