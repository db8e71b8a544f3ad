"""Builds the demo whole-slide image from the real Kaggle patches of one patient.

    python data/make_demo_slide.py                       # data/demo_slide/8955.tiff + labels.csv
    python data/make_demo_slide.py --scale=4 --output=/tmp/8955_x4.tiff    # 1.0 um/px
    python data/make_demo_slide.py --copies=4 --output=/tmp/8955_16x.tiff  # 4 x 4 copies
    python data/make_demo_slide.py --no_mpp --output=/tmp/no_scale.tiff    # no resolution tags

The Kaggle file name `<patient>_idx5_x<X>_y<Y>_class<C>.png` gives the 1-based top-left pixel of
each 50x50 patch on the patient's whole-mount slide, downsampled to 4 um per pixel
(`idc_inference.slide_files.KAGGLE_PATCH_MPP`). Put back at those coordinates on a white canvas
(`idc_inference.mosaic.build_mosaic`, as heatmap.py does), the patches are the slide again, with
white where the data set has no patch (background, and the tissue its authors left out). The
mosaic is written as a pyramidal tiled TIFF, lossless (deflate with horizontal differencing),
with its scale in the resolution tags, which OpenSlide reads as a `generic-tiff` slide with
`openslide.mpp-x/-y`. Every pixel of level 0 is a pixel of a PNG, so the tiles a slide reader
cuts at the patch grid are the PNGs' own pixels (the oracle of tests/test_slides.py).

Options make the variants the tests and the benchmark need, one tile at a time (no variant is
ever whole in memory):
- `--scale=S`: the same tissue at S times the resolution (mpp / S), level 0 upsampled bicubically
  from the mosaic, the pyramid area-averaged from level 0 as a scanner's is (`--downsamples`
  chooses its levels, e.g. 1,3,9);
- `--copies=N`: N x N copies side by side (a slide N^2 times larger, for memory measurements);
- `--no_mpp`: no resolution tags (a slide without a scale).

labels.csv: one row per patch, `file,x,y,label`, with x, y the level-0 top-left pixel (0-based)
of the slide written (scaled by S; the first copy only).
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from idc_inference import mosaic  # noqa: E402
from idc_inference.slide_files import KAGGLE_PATCH_MPP  # noqa: E402
from idc_inference.slide_tiff import write_pyramidal_tiff  # noqa: E402
from input_pipeline.patches import WHITE, find_png_files, load_patch, parse_patch_name  # noqa: E402

DEMO_PATIENT = "8955"
DEMO_DIR = REPO / "data" / "demo_slide"
DEMO_SLIDE = DEMO_DIR / f"{DEMO_PATIENT}.tiff"
DEMO_LABELS = DEMO_DIR / "labels.csv"
DEMO_PATCHES = DEMO_DIR / DEMO_PATIENT
MARGIN = 4  # mosaic pixels of context around an upsampled block (bicubic reaches 2)


def patient_mosaic(patient_dir: str | pathlib.Path) -> tuple[np.ndarray, list[dict]]:
    """The mosaic of one patient's patches (uint8 [H, W, 3]) and one record per patch:
    file name, 0-based x, y and label."""
    files, missing = find_png_files([patient_dir])
    if missing or not files:
        raise SystemExit(f"no PNG patches under {patient_dir}")
    images, names, heights, widths, records = [], [], [], [], []
    for path in files:
        patch = load_patch(path)
        name = parse_patch_name(path.name)
        if patch.error is not None or name.x is None:
            raise SystemExit(f"{path}: {patch.error or 'not a Kaggle patch name'}")
        images.append(patch.image)
        names.append(name)
        heights.append(patch.height)
        widths.append(patch.width)
        records.append({"file": path.name, "x": name.x - 1, "y": name.y - 1, "label": name.label})
    placement = mosaic.SlidePlacement.from_names(names, np.array(heights), np.array(widths))
    return mosaic.build_mosaic(np.stack(images), placement), records


class VirtualSlide:
    """Level-0 pixels of the mosaic at `scale` times its resolution, `copies` x `copies` times,
    computed rectangle by rectangle."""

    def __init__(self, canvas: np.ndarray, *, scale: int = 1, copies: int = 1):
        self.canvas = canvas
        self.scale = scale
        self.copies = copies
        h, w = canvas.shape[:2]
        self.width = w * scale * copies
        self.height = h * scale * copies

    def _canvas_rows_cols(self, start: int, stop: int, size: int, limit: int) -> np.ndarray:
        """Canvas indices of virtual canvas positions [start, stop); -1 beyond the image."""
        index = np.arange(start, stop)
        valid = (index >= 0) & (index < limit)
        return np.where(valid, index % size, -1)

    def _canvas_block(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Canvas pixels of the (copied) canvas rectangle, white outside the image."""
        ch, cw = self.canvas.shape[:2]
        rows = self._canvas_rows_cols(y, y + h, ch, ch * self.copies)
        cols = self._canvas_rows_cols(x, x + w, cw, cw * self.copies)
        block = self.canvas[np.ix_(np.maximum(rows, 0), np.maximum(cols, 0))]
        block[rows < 0] = WHITE
        block[:, cols < 0] = WHITE
        return block

    def region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level-0 pixels [h, w, 3] of the rectangle at (x, y); white beyond the image."""
        if self.scale == 1:
            return self._canvas_block(x, y, w, h)
        from PIL import Image

        s = self.scale
        cx0, cy0 = math.floor(x / s) - MARGIN, math.floor(y / s) - MARGIN
        cx1, cy1 = math.ceil((x + w) / s) + MARGIN, math.ceil((y + h) / s) + MARGIN
        block = self._canvas_block(cx0, cy0, cx1 - cx0, cy1 - cy0)
        big = np.asarray(
            Image.fromarray(block).resize(((cx1 - cx0) * s, (cy1 - cy0) * s), Image.BICUBIC)
        )
        ox, oy = x - cx0 * s, y - cy0 * s
        out = big[oy : oy + h, ox : ox + w].copy()
        # Beyond the image's edge the slide is white, whatever the interpolation brought in.
        out[max(0, self.height - y) :, :] = WHITE
        out[:, max(0, self.width - x) :] = WHITE
        return out


def write_demo_slide(
    patient_dir: str | pathlib.Path,
    output: str | pathlib.Path,
    *,
    scale: int = 1,
    copies: int = 1,
    downsamples: list[int] | None = None,
    with_mpp: bool = True,
    labels: str | pathlib.Path | None = None,
    compression_level: int = 9,
) -> dict:
    """Writes the slide (and `labels`, when given); returns what was written."""
    canvas, records = patient_mosaic(patient_dir)
    patient = pathlib.Path(patient_dir).name
    virtual = VirtualSlide(canvas, scale=scale, copies=copies)
    mpp = KAGGLE_PATCH_MPP / scale
    description = (
        f"Patient {patient} of the Kaggle Breast Histopathology Images (CC0; Janowczyk & "
        f"Madabhushi 2016, Cruz-Roa et al. 2014): {len(records)} real 50x50 patches mosaicked "
        f"at their coordinates, {mpp:g} um/pixel"
        + (f", upsampled {scale}x" if scale > 1 else "")
        + (f", {copies}x{copies} copies" if copies > 1 else "")
        + ". Built by data/make_demo_slide.py."
    )
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_pyramidal_tiff(
        output,
        virtual.width,
        virtual.height,
        virtual.region,
        mpp=mpp if with_mpp else None,
        downsamples=downsamples,
        description=description,
        compression_level=compression_level,
    )
    if labels is not None:
        with open(labels, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "x", "y", "label"])
            for r in sorted(records, key=lambda r: (r["y"], r["x"])):
                writer.writerow([r["file"], r["x"] * scale, r["y"] * scale, r["label"]])
    return {
        "output": str(output),
        "bytes": output.stat().st_size,
        "width": virtual.width,
        "height": virtual.height,
        "mpp": mpp if with_mpp else None,
        "patches": len(records),
        "idc_patches": sum(r["label"] == 1 for r in records),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--patient_dir", default=str(DEMO_PATCHES), help="Kaggle patches of one patient."
    )
    parser.add_argument("--output", default=str(DEMO_SLIDE), help="The TIFF to write.")
    parser.add_argument(
        "--labels", default=None, help="labels.csv to write (default: beside the demo slide)."
    )
    parser.add_argument("--scale", type=int, default=1, help="Resolution factor (mpp / scale).")
    parser.add_argument("--copies", type=int, default=1, help="N x N copies side by side.")
    parser.add_argument("--downsamples", default=None, help="Pyramid downsamples, e.g. 1,2,4,8.")
    parser.add_argument("--no_mpp", action="store_true", help="Write no resolution tags.")
    parser.add_argument(
        "--compression_level", type=int, default=9, help="zlib level: 1 fastest, 9 smallest."
    )
    args = parser.parse_args(argv)
    labels = args.labels
    if labels is None and pathlib.Path(args.output).resolve() == DEMO_SLIDE.resolve():
        labels = DEMO_LABELS
    downsamples = [int(d) for d in args.downsamples.split(",")] if args.downsamples else None
    info = write_demo_slide(
        args.patient_dir,
        args.output,
        scale=args.scale,
        copies=args.copies,
        downsamples=downsamples,
        with_mpp=not args.no_mpp,
        labels=labels,
        compression_level=args.compression_level,
    )
    print(
        f"wrote {info['output']}: {info['width']} x {info['height']} px at "
        f"{info['mpp']} um/px, {info['bytes'] / 1e6:.2f} MB, {info['patches']} patches "
        f"({info['idc_patches']} IDC)" + (f"; labels {labels}" if labels else "")
    )


if __name__ == "__main__":
    main()
