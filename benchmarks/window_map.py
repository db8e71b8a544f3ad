"""The cost of seeing the surroundings: map_slide of the demo slide by a patch network and by a
neighbourhood network, side by side in one process.

    python benchmarks/window_map.py --models=idc_inference/shipped/mobilenet_v1_idc.safetensors,\\
        /tmp/v2_window3.safetensors --rounds=3

Each model is loaded and compiled once (compilation excluded, as map_slide.py reports it), then
`slide_maps.map_slide` of data/demo_slide/8955.tiff (thumbnail, tissue, 483 tissue tiles, the
outputs) runs for each model in turn, the order alternated each round (A B, B A, ...) after one
warm-up of each; with each model's own TTA (the default of map_slide.py). Reported: the median
wall time of the whole map, tiles/s, milliseconds per tile, and the ratio of each model's
median to the first's.

Writes the JSON (default benchmarks/results/window_map.json) and prints a markdown table.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import tempfile
import time

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402

DEMO_SLIDE = REPO / "data" / "demo_slide" / "8955.tiff"


def map_once(model) -> dict:
    from idc_inference import slide_maps  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = slide_maps.map_slide(
            DEMO_SLIDE,
            out,
            model.predictor,
            model=model.describe(),
            threshold=model.threshold,
            calibration=model.calibration,
        )
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "tiles": summary["tiles"]["predicted"]}


def main() -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--models", required=True, help="Weights files or runs, comma-separated.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "window_map.json"))
    args = parser.parse_args()

    import idc_inference  # noqa: PLC0415

    paths = [p for p in args.models.split(",") if p]
    models = [idc_inference.load(p) for p in paths]
    for model in models:  # warm-up: caches, threads, first reads
        map_once(model)
    times: list[list[float]] = [[] for _ in models]
    tiles = [0] * len(models)
    for round_ in range(args.rounds):
        order = range(len(models)) if round_ % 2 == 0 else reversed(range(len(models)))
        for i in order:
            result = map_once(models[i])
            times[i].append(result["seconds"])
            tiles[i] = result["tiles"]
    rows, records = [], []
    base = statistics.median(times[0])
    for path, model, seconds, count in zip(paths, models, times, tiles):
        median = statistics.median(seconds)
        record = {
            "model": path,
            "window": model.window,
            "image_size": model.config.preprocess.image_size,
            "network": model.config.model.name,
            "tta": model.tta,
            "tiles": count,
            "seconds": seconds,
            "median_seconds": median,
            "tiles_per_second": count / median,
            "ms_per_tile": 1000 * median / count,
            "ratio_to_first": median / base,
        }
        records.append(record)
        rows.append(
            f"| {pathlib.Path(path).name} | {model.config.model.name} | {model.window}x"
            f"{model.window} at {record['image_size']} px | {'8 views' if model.tta else '1 view'} "
            f"| {median:.1f} ({', '.join(f'{s:.1f}' for s in seconds)}) | "
            f"{record['tiles_per_second']:.1f} | {record['ms_per_tile']:.1f} | "
            f"{record['ratio_to_first']:.2f} |"
        )
    payload = {"meta": harness.host_meta(), "rounds": args.rounds, "models": records}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(payload, indent=1))
    print(
        "| model | network | input | TTA | map of the demo slide, s: median (rounds) | "
        "tiles/s | ms per tile | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
