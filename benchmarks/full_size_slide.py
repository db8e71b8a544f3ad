"""A full-size 40x slide, built and mapped: map_slide.py's wall time, tiles/s and peak memory.

    python benchmarks/full_size_slide.py                       # 100,000 x 80,000 px, then the map
    python benchmarks/full_size_slide.py --keep=/data/40x.tiff  # keep the slide (GBs) for reuse
    python benchmarks/full_size_slide.py --slide=/data/40x.tiff # map an existing one, no build
    python benchmarks/full_size_slide.py --width=8000 --height=6000 --notta   # a quick check

The slide: a pyramidal tiled TIFF as a 40x scanner writes it, 0.25 um/px (`--mpp`), 256 x 256
JPEG tiles (YCbCr 4:2:0, `--quality`), levels of downsample 1, 4, 16 and 64 (0.25, 1, 4, 16
um/px), BigTIFF, read by OpenSlide as `generic-tiff`. Its tissue is real: the 3,308 Kaggle
patches of data/idc_sample (`bench_data.sample_patches`) placed on the 200 um grid of the
model's tiles in blobs (`TissueLayout`: a smoothed random field thresholded to cover
`--tissue_fraction` of the area, 40% by default, as a section covers much of its slide), at
4 um/px, their own scale. Each level is computed tile by tile from that grid, never held whole:
levels finer than 4 um/px enlarge the patches (nearest neighbour, so that every level is the area
average of level 0, as a scanner's pyramid is), the 4 um/px level is the patches' own pixels, and
coarser levels area-average them. Tiles without tissue are one shared white JPEG. The pixels at
0.25 um/px are the patches enlarged 16x, not a scan's detail; the map reads the 4 um/px level
(`Slide.best_level`), so that is what it measures.

The map: `map_slide.py` on the slide in a fresh process, with the shipped model and its default
8-view TTA (`--notta`: one view), as a user runs it; wall time from start to exit (model loading
and compilation included), the tiles/s of the streaming pipeline and of the whole run, and the
child's peak resident memory (`os.wait4`'s ru_maxrss). Writes the JSON (default
benchmarks/results/full_size_slide.json) and prints a markdown table.

The same command measures the GPU path on a GPU machine (`run_all.sh`, stage "full-size slide").
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402

from input_pipeline import KAGGLE_PATCH_MPP  # noqa: E402
from input_pipeline.patches import PATCH_SIZE, WHITE  # noqa: E402

DOWNSAMPLES = (1, 4, 16, 64)
TILE = 256


class TissueLayout:
    """Which real patch lies in each cell of the 200 um grid of a slide (-1: glass).

    `region(x, y, w, h)` gives the pixels of that rectangle at the patches' scale (4 um/px),
    white beyond the tissue and the slide.
    """

    def __init__(
        self, bank: np.ndarray, width: int, height: int, mpp: float, fraction: float, seed: int
    ):
        from scipy import ndimage

        self.width, self.height, self.mpp = width, height, mpp
        self.canvas_per_level0 = mpp / KAGGLE_PATCH_MPP  # canvas pixels per level-0 pixel
        cols = math.ceil(width * self.canvas_per_level0 / PATCH_SIZE)
        rows = math.ceil(height * self.canvas_per_level0 / PATCH_SIZE)
        rng = np.random.default_rng(seed)
        # Blobs: white noise smoothed over a twelfth of the slide, cut at the quantile that
        # leaves `fraction` of the cells as tissue.
        field = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), max(rows, cols) / 12)
        tissue = field > np.quantile(field, 1.0 - fraction)
        self.cells = np.where(tissue, rng.integers(0, len(bank), (rows, cols)), -1)
        # The bank with one white patch at the end, which glass cells (-1) index.
        self.bank = np.concatenate([bank, np.full((1, *bank.shape[1:]), WHITE, np.uint8)])

    @property
    def tissue_fraction(self) -> float:
        return float(np.mean(self.cells >= 0))

    def region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 [h, w, 3] of the canvas (4 um/px) from pixel (x, y)."""
        ys, xs = np.arange(y, y + h), np.arange(x, x + w)
        rows, cols = ys // PATCH_SIZE, xs // PATCH_SIZE
        inside_r = rows < self.cells.shape[0]
        inside_c = cols < self.cells.shape[1]
        cell = self.cells[np.minimum(rows, self.cells.shape[0] - 1)][
            :, np.minimum(cols, self.cells.shape[1] - 1)
        ]
        cell = np.where(inside_r[:, None] & inside_c[None, :], cell, -1)
        return self.bank[cell, (ys % PATCH_SIZE)[:, None], (xs % PATCH_SIZE)[None, :]]

    def has_tissue(self, x: int, y: int, w: int, h: int) -> bool:
        rows = slice(y // PATCH_SIZE, (y + h - 1) // PATCH_SIZE + 1)
        cols = slice(x // PATCH_SIZE, (x + w - 1) // PATCH_SIZE + 1)
        return bool(np.any(self.cells[rows, cols] >= 0))


def level_tile(layout: TissueLayout, downsample: int, tx: int, ty: int) -> np.ndarray | None:
    """Tile (tx, ty) of the level of `downsample`, or None when it holds no tissue."""
    from PIL import Image

    per_canvas = KAGGLE_PATCH_MPP / (layout.mpp * downsample)  # level pixels per canvas pixel
    if per_canvas >= 1:  # finer than the patches: enlarge each canvas pixel
        factor = int(round(per_canvas))
        span = TILE // factor
        box = (tx * span, ty * span, span, span)
    else:  # coarser: area-average canvas pixels
        factor = int(round(1 / per_canvas))
        box = (tx * TILE * factor, ty * TILE * factor, TILE * factor, TILE * factor)
    if not layout.has_tissue(*box):
        return None
    block = layout.region(*box)
    if per_canvas >= 1:
        block = np.repeat(np.repeat(block, factor, axis=0), factor, axis=1)
    elif factor > 1:
        block = np.array(Image.fromarray(block).reduce(factor))
    level_w = -(-layout.width // downsample)
    level_h = -(-layout.height // downsample)
    block[max(0, level_h - ty * TILE) :, :] = WHITE  # past the slide's edge: white
    block[:, max(0, level_w - tx * TILE) :] = WHITE
    return block


def jpeg(block: np.ndarray, quality: int) -> bytes:
    """A baseline JFIF of the tile, YCbCr 4:2:0 (the TIFF's YCbCrSubSampling says so)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(block).save(buffer, "JPEG", quality=quality, subsampling=2)
    return buffer.getvalue()


def _allow_encoded_jpeg() -> None:
    """tifffile looks up a JPEG codec even when handed encoded tiles; without imagecodecs
    (not a requirement), give it PIL's, which is what encodes the tiles here anyway."""
    import tifffile

    if 7 not in tifffile.TIFF.COMPRESSORS:  # 7: COMPRESSION.JPEG
        tifffile.TIFF.COMPRESSORS._codecs[7] = lambda data, **_: jpeg(np.asarray(data), 90)


def write_slide(
    path: pathlib.Path, layout: TissueLayout, *, quality: int = 80, threads: int = 2
) -> dict:
    """Writes the slide (module docstring) tile by tile; its levels' sizes and tile counts."""
    import tifffile

    _allow_encoded_jpeg()
    white = jpeg(np.full((TILE, TILE, 3), WHITE, np.uint8), quality)
    levels = []

    def encoded(downsample: int, tx: int, ty: int) -> bytes:
        block = level_tile(layout, downsample, tx, ty)
        return white if block is None else jpeg(block, quality)

    def tiles(downsample: int, across: int, down: int, counts: dict):
        # One row of tiles at a time, encoded in threads (PIL releases the GIL): memory stays
        # at a row's JPEGs.
        for ty in range(down):
            row = list(pool.map(lambda tx, ty=ty: encoded(downsample, tx, ty), range(across)))
            counts["tissue_tiles"] += sum(tile is not white for tile in row)
            yield from row

    with ThreadPoolExecutor(threads) as pool, tifffile.TiffWriter(path, bigtiff=True) as writer:
        for i, downsample in enumerate(DOWNSAMPLES):
            level_w = -(-layout.width // downsample)
            level_h = -(-layout.height // downsample)
            across, down = -(-level_w // TILE), -(-level_h // TILE)
            counts = {"tissue_tiles": 0}
            per_cm = 1e4 / (layout.mpp * downsample)
            writer.write(
                tiles(downsample, across, down, counts),
                shape=(level_h, level_w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="ycbcr",
                subsampling=(2, 2),
                compression="jpeg",
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )
            levels.append(
                {
                    "downsample": downsample,
                    "dimensions": [level_w, level_h],
                    "tiles": across * down,
                    "tiles_with_tissue": counts["tissue_tiles"],
                }
            )
    return {"levels": levels, "file_bytes": path.stat().st_size}


def build(args, path: pathlib.Path) -> dict:
    """Loads the patch bank, lays out the tissue and writes the slide; what was built."""
    import resource

    from bench_data import sample_patches

    start = time.perf_counter()
    bank = sample_patches()[0]["image"]
    layout = TissueLayout(
        bank, args.width, args.height, args.mpp, args.tissue_fraction, seed=args.seed
    )
    written = write_slide(path, layout, quality=args.quality, threads=args.build_threads)
    return {
        "path": str(path),
        "width": args.width,
        "height": args.height,
        "mpp": args.mpp,
        "jpeg_quality": args.quality,
        "patches_in_bank": len(bank),
        "tissue_cells_fraction": layout.tissue_fraction,
        **written,
        "build_seconds": time.perf_counter() - start,
        "build_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_map(args, slide: pathlib.Path, output_dir: pathlib.Path) -> dict:
    """map_slide.py on the slide in a child process: wall time, peak RSS, its summary."""
    command = [
        sys.executable,
        str(REPO / "map_slide.py"),
        f"--output_dir={output_dir}",
        "--noprogress",
        f"--num_threads={args.num_threads}",
        *([] if args.tta is None else ["--tta" if args.tta else "--notta"]),
        str(slide),
    ]
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{output[-3000:]}")
    summary = json.loads((output_dir / f"{slide.stem}.summary.json").read_text())
    tiles = summary["tiles"]
    return {
        "command": command,
        "wall_seconds": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "tissue_tiles": tiles["tissue"],
        "grid_tiles": tiles["in_grid"],
        "level_read": tiles["geometry"]["level"],
        "tta": summary["tta"],
        "streaming_seconds": summary["throughput"]["seconds"],
        "streaming_tiles_per_second": summary["throughput"]["tiles_per_second"],
        "tiles_per_second_wall": tiles["tissue"] / wall,
        "tissue_area_mm2": summary["tissue_area_mm2"],
        "thumbnail_level": summary["tissue"]["thumbnail_level"],
        "output_tail": output[-2000:],
    }


def markdown(results: dict) -> str:
    built, mapped, meta = results.get("slide", {}), results["map"], results["meta"]
    lines = ["| what | value |", "|---|---|"]
    if "width" in built:
        lines += [
            f"| slide | {built['width']:,} x {built['height']:,} px at {built['mpp']} um/px, "
            f"levels {', '.join(str(level['downsample']) for level in built['levels'])}, JPEG "
            f"q{built['jpeg_quality']} |",
            f"| file | {built['file_bytes'] / 1e6:,.0f} MB |",
            f"| tissue | {built['tissue_cells_fraction']:.0%} of the 200 um cells |",
            f"| build | {built['build_seconds']:.0f} s, peak RSS "
            f"{built['build_peak_rss_mib']:.0f} MiB |",
        ]
    lines += [
        f"| tiles | {mapped['tissue_tiles']:,} tissue of {mapped['grid_tiles']:,}, read from "
        f"level {mapped['level_read']} |",
        f"| map wall time (start to exit, compilation included) | {mapped['wall_seconds']:.0f} "
        f"s ({'8-view TTA' if mapped['tta'] else 'one view'}) |",
        f"| tiles/s: streaming / whole run | {mapped['streaming_tiles_per_second']:.1f} / "
        f"{mapped['tiles_per_second_wall']:.1f} |",
        f"| peak RSS of the map | {mapped['peak_rss_mib']:.0f} MiB |",
        f"| machine | {meta['cpu_model']}, {meta['cpu_count']} cores; load average "
        f"{meta['load_average_before']:.1f} before, {meta['load_average_after']:.1f} after |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--width", type=int, default=100_000)
    parser.add_argument("--height", type=int, default=80_000)
    parser.add_argument("--mpp", type=float, default=0.25)
    parser.add_argument("--tissue_fraction", type=float, default=0.4)
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the tiles.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build_threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--num_threads", type=int, default=4, help="map_slide.py's readers.")
    parser.add_argument(
        "--tta", action="store_true", default=None, help="8-view TTA (default: the model's)."
    )
    parser.add_argument("--notta", dest="tta", action="store_false", help="One view.")
    parser.add_argument("--slide", default=None, help="Map this slide instead of building one.")
    parser.add_argument("--keep", default=None, help="Write the slide here and keep it.")
    parser.add_argument("--out", default=str(harness.RESULTS_DIR / "full_size_slide.json"))
    args = parser.parse_args()

    results = {"meta": harness.host_meta()}
    results["meta"]["versions"] = harness.versions(["jax", "jaxlib", "openslide-bin", "tifffile"])
    with tempfile.TemporaryDirectory(prefix="full_size_slide_") as work:
        work = pathlib.Path(work)
        if args.slide:
            slide = pathlib.Path(args.slide)
            results["slide"] = {"path": str(slide), "file_bytes": slide.stat().st_size}
        else:
            slide = pathlib.Path(args.keep) if args.keep else work / "full_size_40x.tiff"
            results["slide"] = build(args, slide)
            print(f"built {slide} in {results['slide']['build_seconds']:.0f} s", flush=True)
        results["map"] = run_map(args, slide, work / "maps")
    harness.write_results(results, args.out, markdown(results))


if __name__ == "__main__":
    main()
