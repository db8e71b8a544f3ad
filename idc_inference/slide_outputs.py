"""The files of one slide's map, named after the slide and written atomically (slide_maps).

    names = output_names(slide.path)           # {"overlay": "<stem>.overlay.png", ...}
    write_outputs(output_dir, summary, started=..., slide=slide, thumbnail=thumbnail, ...)

`slide_maps` lists the files and what each holds. They are written under temporary names and
renamed into place only when all of them are complete, `summary.json` last (and an earlier
run's removed first): a summary beside the other files means they are whole and belong
together. An error on the way leaves no output behind.

With `geojson_tiles`, the GeoJSON also holds every mapped tile as a QuPath tile object
(`tile_features`) whose measurements are its P(IDC): the map's ("P(IDC)", with the slide-context
stage when it ran) and the patch network's own ("P(IDC) patch"), so that QuPath's Measurement
Maps (Measure > Show measurement maps) paint the heatmap over the slide; the regions stay
annotations classified "IDC" in their colour.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import math
import os
import pathlib

import numpy as np

from idc_inference import overlay, regions, slide_files
from idc_inference.slide_thumbnails import Thumbnail
from idc_inference.slide_tiles import TileGrid

TILE_CSV_COLUMNS = (
    "x",
    "y",
    "width",
    "height",
    "tissue_fraction",
    "p_idc",
    "p_idc_patch",
    "predicted_label",
    "true_label",
)


class _AtomicOutputs:
    """Files written under temporary names, renamed into place together by `commit`."""

    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        self.pending: list[tuple[pathlib.Path, pathlib.Path]] = []

    def path(self, name: str) -> pathlib.Path:
        final = self.directory / name
        temporary = self.directory / f".{name}.partial-{os.getpid()}"
        self.pending.append((temporary, final))
        return temporary

    def commit(self, marker: pathlib.Path) -> None:
        """Renames every file into place; `marker` (the summary) last, after the old one goes."""
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        ordered = sorted(self.pending, key=lambda pair: pair[1] == marker)
        for temporary, final in ordered:
            os.replace(temporary, final)
        self.pending.clear()

    def discard(self) -> None:
        for temporary, _ in self.pending:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        self.pending.clear()


def json_ready(value):
    """Plain JSON values: NumPy scalars as Python numbers, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value



def write_json(path: str | os.PathLike, payload: dict) -> None:
    """`payload` as JSON (`json_ready`), written whole: a reader never sees half a file."""
    path = pathlib.Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(json_ready(payload), indent=2) + "\n")
    temporary.replace(path)

def _number(value: float) -> str:
    """A level-0 coordinate: an integer as such, else up to two decimals."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def tile_features(mapped: TileGrid, p_idc: np.ndarray, patch_p_idc: np.ndarray) -> list[dict]:
    """The tiles as QuPath tile objects (GeoJSON features, level-0 pixels) with their P(IDC)."""
    width, height = mapped.size
    features = []
    for i in range(len(p_idc)):
        x, y = round(float(mapped.left[i]), 2), round(float(mapped.top[i]), 2)
        x1, y1 = round(x + width, 2), round(y + height, 2)
        features.append(
            {
                "type": "Feature",
                # Counter-clockwise in x, y, as RFC 7946 and regions.to_geojson wind them.
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]],
                },
                "properties": {
                    "objectType": "tile",
                    "isLocked": True,
                    "measurements": {
                        "P(IDC)": round(float(p_idc[i]), 6),
                        "P(IDC) patch": round(float(patch_p_idc[i]), 6),
                        "Tissue fraction": round(float(mapped.tissue_fraction[i]), 3),
                    },
                },
            }
        )
    return features


def map_figures(p_idc: np.ndarray, found: list[regions.Region], mm2_per_px2: float) -> dict:
    """What slides.csv lists beside the summary's areas: P(IDC) over the mapped tiles (mean,
    max) and the largest IDC region's area (`found` is ordered by decreasing area)."""
    return {
        "p_idc_mean": float(np.mean(p_idc)) if len(p_idc) else None,
        "p_idc_max": float(np.max(p_idc)) if len(p_idc) else None,
        "largest_idc_region_mm2": found[0].polygon.area * mm2_per_px2 if found else 0.0,
    }


def output_names(slide_path: str | os.PathLike) -> dict[str, str]:
    stem = pathlib.Path(slide_path).stem
    return {
        "overlay": f"{stem}.overlay.png",
        "geojson": f"{stem}.geojson",
        "tiles_csv": f"{stem}.tiles.csv",
        "unreadable": f"{stem}.unreadable.txt",
        "summary": f"{stem}.summary.json",
    }


def write_outputs(
    output_dir: pathlib.Path,
    summary: dict,
    *,
    started: datetime.datetime,
    slide: slide_files.Slide,
    thumbnail: Thumbnail,
    mapped: TileGrid,
    p_idc: np.ndarray,
    patch_p_idc: np.ndarray,
    decisions: np.ndarray,
    truth: np.ndarray,
    found: list[regions.Region],
    unreadable: list[tuple[str, str]],
    opacity: float,
    geojson_tiles: bool = False,
) -> None:
    """Writes every output of the map to `output_dir`, all or none (module docstring).

    `summary` is the map's record (`slide_maps.map_slide`): it names the files (`outputs`),
    gives the threshold and the counts for the overlay's title, and receives `seconds_total`
    (since `started`) before it is written, last. `mapped` are the tiles predicted, with their
    `p_idc` (of the map), `patch_p_idc` (the patch network's own), `decisions` at the threshold
    and `truth` (-1 where unlabelled); `found` the IDC regions; `unreadable` the (name, reason)
    of every tile that could not be read. `geojson_tiles`: the GeoJSON holds the tiles too
    (module docstring). The summary receives `map_figures` and `geojson_tiles` as well.
    """
    names = summary["outputs"]
    threshold = summary["threshold"]
    outputs = _AtomicOutputs(output_dir)
    try:
        with outputs.path(names["tiles_csv"]).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(TILE_CSV_COLUMNS)
            for i in range(len(p_idc)):
                writer.writerow(
                    [
                        _number(mapped.left[i]),
                        _number(mapped.top[i]),
                        _number(mapped.size[0]),
                        _number(mapped.size[1]),
                        f"{mapped.tissue_fraction[i]:.3f}",
                        f"{p_idc[i]:.6f}",
                        f"{patch_p_idc[i]:.6f}",
                        int(decisions[i]),
                        "" if truth[i] < 0 else int(truth[i]),
                    ]
                )
        regions.write_geojson(
            outputs.path(names["geojson"]),
            found,
            mpp=slide.scale.mpp,
            slide_name=slide.path.name,
            extra_features=tile_features(mapped, p_idc, patch_p_idc) if geojson_tiles else (),
        )
        with outputs.path(names["unreadable"]).open("w") as f:
            f.writelines(f"{name}\t{reason}\n" for name, reason in unreadable)
        title = (
            f"{slide.path.name}: {len(p_idc)} tissue tiles, {int(decisions.sum())} IDC "
            f"(P >= {threshold:.3g}), IDC {summary['idc_fraction_of_tissue']:.1%} of tissue"
        )
        if not summary["tiles"]["tissue"]:
            title = f"{slide.path.name}: no tissue found"
        overlay.render_overlay(
            outputs.path(names["overlay"]),
            thumbnail,
            mapped.cols,
            mapped.rows,
            mapped.size,
            p_idc,
            threshold=threshold,
            mpp=slide.scale.mpp,
            regions=found,
            title=title,
            opacity=opacity,
        )
        summary["geojson_tiles"] = geojson_tiles
        summary.update(map_figures(p_idc, found, slide.scale.mpp_x * slide.scale.mpp_y / 1e6))
        summary["seconds_total"] = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
        with outputs.path(names["summary"]).open("w") as f:
            json.dump(json_ready(summary), f, indent=2)
            f.write("\n")
        outputs.commit(output_dir / names["summary"])
    except BaseException:
        outputs.discard()
        raise
