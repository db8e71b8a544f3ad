"""The IDC map of one whole slide, and the files a pathologist opens (map_slide.py).

    slide = slide_files.open_slide("tumour.svs")            # SlideError if unusable
    summary = map_slide(slide, "out/", model.predictor, model=model.describe(),
                        threshold=model.threshold, labels="truth.csv")

What `map_slide` does, in order:

1. a thumbnail of the slide (at most 2048 pixels a side, from the pyramid level that fits,
   read in bands: `slide_thumbnails.read_thumbnail`), and the tissue on it
   (`tissue.detect_tissue`);
2. the grid of tiles, each the field of view of one Kaggle patch (`slide_files.KAGGLE_PATCH_MPP`),
   from level-0 pixel (0, 0) (`slide_tiles.tile_grid`); a tile is analysed when at least
   `min_tissue` of it is tissue;
3. P(IDC) of every tissue tile through the streaming pipeline (`tiles.stream`: worker threads
   read and resample tiles while the network runs; unreadable tiles are counted, skipped and
   listed); with `context`, the slide-context stage then revises each tile's P(IDC) by its
   neighbours' on the tile grid (`context_stage.ContextStage`), and the map is of that;
4. the IDC regions at the threshold (`regions.idc_regions`), and with `labels` the agreement
   with the ground truth: tile-level ROC AUC and confusion counts, Dice of the regions
   (`slide_labels.py`);
5. the outputs, to `output_dir`, named after the slide (`<stem>.*`; `slide_outputs.py`):
   - `<stem>.overlay.png`: P(IDC) over the thumbnail, colour bar, scale bar (`overlay.py`);
   - `<stem>.geojson`: the IDC regions for QuPath, level-0 pixels (`regions.py`), and with
     `geojson_tiles` every tile as a QuPath tile object with its P(IDC);
   - `<stem>.tiles.csv`: every analysed tile: level-0 x, y, width, height, tissue fraction,
     P(IDC) of the map, the patch network's own P(IDC) (the same without `context`), the call
     at the threshold, and the true label when labels were given;
   - `<stem>.unreadable.txt`: the tiles that could not be read, with why (empty when none);
   - `<stem>.summary.json`: tissue and IDC areas in mm2, the IDC fraction of the tissue, the
     slide, level and scale, the model, checkpoint, threshold and TTA, throughput, warnings.

The outputs appear together or not at all (`slide_outputs.write_outputs`): a summary beside the
other files means they are whole and belong together.
"""

from __future__ import annotations

import datetime
import os
import pathlib

import numpy as np

from idc_inference import regions, slide_files, slide_outputs, slide_thumbnails, tiles, tissue
from idc_inference.calibration import Calibration
from idc_inference.context_stage import ContextStage
from idc_inference.slide_labels import Labels, compare_with_labels, read_labels
from idc_inference.slide_tiles import TileGeometry, TileReader, tile_grid

MIN_TISSUE_FRACTION = 0.1


def predict_slide_tiles(
    slide: slide_files.Slide,
    predictor,
    left: np.ndarray,
    top: np.ndarray,
    *,
    num_threads: int = 4,
    keep_images: bool = False,
    progress: bool = False,
) -> tuple[tiles.StreamResult, TileGeometry, tiles.SlideTiles]:
    """P(IDC) of the tiles with these level-0 top-left corners, through the streaming pipeline."""
    geometry = TileGeometry.for_slide(slide)
    reader = TileReader(slide, geometry)
    source = tiles.SlideTiles(reader, left, top, window=getattr(predictor, "window", 1))
    try:
        result = tiles.stream(
            source,
            predictor,
            num_threads=num_threads,
            keep_images=keep_images,
            progress=progress,
            description=slide.path.name,
        )
    finally:
        reader.close()
    return result, geometry, source


# ----------------------------------------------------------------------------- the map


def map_slide(
    slide: slide_files.Slide | str | os.PathLike,
    output_dir: str | os.PathLike,
    predictor,
    *,
    model: dict | None = None,
    threshold: float = 0.5,
    labels: str | os.PathLike | Labels | None = None,
    mpp: float | None = None,
    min_tissue: float = MIN_TISSUE_FRACTION,
    num_threads: int = 4,
    progress: bool = False,
    opacity: float = 0.6,
    smooth_um: float = 0.0,
    max_thumbnail: int = 2048,
    context: ContextStage | None = None,
    calibration: Calibration | None = None,
    geojson_tiles: bool = False,
) -> dict:
    """Maps P(IDC) over one slide and writes its outputs (module docstring); returns the summary.

    `predictor` is an `idc_inference.predictor.Predictor`; `model` describes it for the record
    (`IDCModel.describe()`: source, checkpoint, step, TTA, code version). `context`: the
    slide-context stage to apply (`IDCModel.context_stage`); `threshold` then applies to its
    P(IDC) (the stage's own threshold is `context.threshold`). `calibration` maps the patch
    network's P(IDC) (`IDCModel.calibration`; the context stage calibrates its own).
    `geojson_tiles`: the GeoJSON also holds every tile as a QuPath tile object with its P(IDC)
    (`slide_outputs`). Raises
    `slide_files.SlideError` for a slide that cannot be used and `LabelsError` for bad labels;
    neither leaves an output behind.
    """
    started = datetime.datetime.now(datetime.UTC)
    if not isinstance(slide, slide_files.Slide):
        slide = slide_files.open_slide(slide, mpp=mpp)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the threshold must lie in [0, 1], got {threshold}")
    if not 0.0 < min_tissue <= 1.0:
        raise ValueError(f"min_tissue must lie in (0, 1], got {min_tissue}")
    if labels is not None and not isinstance(labels, Labels):
        labels = read_labels(labels, slide)
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = slide_outputs.output_names(slide.path)
    warnings: list[str] = list(slide.warnings)

    thumbnail = slide_thumbnails.read_thumbnail(slide, max_side=max_thumbnail)
    mask = tissue.detect_tissue(thumbnail.image, thumbnail.mpp)
    grid = tile_grid(slide, thumbnail, mask.mask)
    analysed = grid.subset(grid.tissue_fraction >= min_tissue)
    if len(analysed.cols) == 0:
        warnings.append(f"{slide.path}: no tissue found; the map is empty")

    result, geometry, source = predict_slide_tiles(
        slide,
        predictor,
        analysed.left,
        analysed.top,
        num_threads=num_threads,
        progress=progress,
    )
    unreadable = [(source.name(i), reason) for i, reason in result.errors]
    if len(analysed.cols) and not len(result.indices):
        raise slide_files.SlideError(
            f"{slide.path}: none of its {len(analysed.cols)} tissue tiles could be read "
            f"(first: {unreadable[0][1]})"
        )
    if unreadable:
        warnings.append(
            f"{slide.path}: {len(unreadable)} of {len(analysed.cols)} tissue tiles could not "
            f"be read; skipped, listed in {names['unreadable']}"
        )
    mapped = analysed.subset(result.indices)
    network_p_idc = result.p_idc
    patch_p_idc = network_p_idc if calibration is None else calibration.apply(network_p_idc)
    p_idc = patch_p_idc
    if context is not None:
        p_idc = context.predict(network_p_idc, mapped.rows, mapped.cols)
    decisions = p_idc >= threshold
    smooth_px = smooth_um / slide.scale.mpp
    found = regions.idc_regions(
        mapped.cols, mapped.rows, mapped.size, p_idc, threshold, smooth_px=smooth_px
    )

    mm2_per_px2 = slide.scale.mpp_x * slide.scale.mpp_y / 1e6
    tile_mm2 = mapped.size[0] * mapped.size[1] * mm2_per_px2
    tissue_area = float(np.sum(mapped.tissue_fraction)) * tile_mm2
    idc_tissue_area = float(np.sum(mapped.tissue_fraction[decisions])) * tile_mm2
    region_area = regions.union(found).area * mm2_per_px2

    label_report, truth = None, np.full(len(p_idc), -1, np.int64)
    if labels is not None:
        label_report, truth = compare_with_labels(
            labels, mapped, p_idc, threshold, found, mm2_per_px2
        )

    summary = {
        "slide": slide.describe(),
        "created": started.isoformat(timespec="seconds"),
        "model": model or {},
        "threshold": threshold,
        "tta": (model or {}).get("tta"),
        "context_stage": None if context is None else context.to_record(),
        "calibration": None if calibration is None else calibration.to_record(),
        "tissue_area_mm2": tissue_area,
        "idc_tissue_area_mm2": idc_tissue_area,
        "idc_fraction_of_tissue": idc_tissue_area / tissue_area if tissue_area > 0 else 0.0,
        "idc_region_area_mm2": region_area,
        "idc_regions": len(found),
        "tiles": {
            "geometry": geometry.describe(),
            "grid_rows_cols": list(grid.shape),
            "in_grid": int(len(grid.cols)),
            "tissue": int(len(analysed.cols)),
            "min_tissue_fraction": min_tissue,
            "predicted": int(len(p_idc)),
            "unreadable": len(unreadable),
            "idc": int(decisions.sum()),
        },
        "tissue": {
            **mask.describe(),
            "mask_area_mm2": mask.area_mm2,
            "thumbnail_level": thumbnail.level,
        },
        "throughput": {
            "tiles_per_second": result.images_per_second,
            "seconds": result.seconds,
            "num_threads": num_threads,
            "batch_size": getattr(predictor, "batch_size", None),
        },
        "labels": label_report,
        "outputs": names,
        "warnings": warnings,
    }

    slide_outputs.write_outputs(
        output_dir,
        summary,
        started=started,
        slide=slide,
        thumbnail=thumbnail,
        mapped=mapped,
        p_idc=p_idc,
        patch_p_idc=patch_p_idc,
        decisions=decisions,
        truth=truth,
        found=found,
        unreadable=unreadable,
        opacity=opacity,
        geojson_tiles=geojson_tiles,
    )
    summary["unreadable_tiles"] = unreadable
    return summary
