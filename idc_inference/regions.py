"""IDC regions: the tiles called IDC merged into polygons, as GeoJSON that QuPath imports.

    found = idc_regions(cols, rows, tile_size, p_idc, threshold)   # [Region], level-0 pixels
    write_geojson("slide.geojson", found, mpp=0.25)
    dice(union(found), squares(truth_left, truth_top, tile_size))

A region is a 4-connected group of tiles whose P(IDC) is at or above the threshold, drawn as
the union of their squares (shapely), so it is exactly the area the map calls IDC: valid
polygons (holes where a tile inside is not IDC), in level-0 pixel coordinates, the frame QuPath
and every slide viewer use. `smooth_um` optionally rounds the tile staircase (a morphological
closing then opening of that radius, in micrometres) for display; the default keeps the tiles'
edges, which is what Dice and areas measure.

The GeoJSON is a FeatureCollection of Polygon features with QuPath's properties (QuPath 0.4 and
later; File > Import objects, or drag the file onto the slide): "objectType": "annotation", a
"classification" named "IDC" with its colour, and "measurements" holding the region's mean and
maximum P(IDC), its number of tiles and its area.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid

import numpy as np

CLASSIFICATION = "IDC"
COLOUR = (200, 0, 0)  # QuPath draws the annotations in this RGB colour
# Stable ids: the same region of the same slide gets the same UUID in every run.
_NAMESPACE = uuid.UUID("5b0c4e3a-8f33-4a8c-9a0e-2a44b7a1e5d1")


@dataclasses.dataclass
class Region:
    polygon: object  # shapely Polygon, level-0 pixels
    tiles: int
    mean_p_idc: float
    max_p_idc: float


def squares(left: np.ndarray, top: np.ndarray, size: tuple[float, float]):
    """The union of axis-aligned squares (tiles) as one shapely geometry."""
    import shapely

    left, top = np.asarray(left, np.float64), np.asarray(top, np.float64)
    boxes = shapely.box(left, top, left + size[0], top + size[1])
    return shapely.union_all(boxes) if len(boxes) else shapely.Polygon()


def idc_regions(
    cols: np.ndarray,
    rows: np.ndarray,
    size: tuple[float, float],
    p_idc: np.ndarray,
    threshold: float,
    *,
    smooth_px: float = 0.0,
) -> list[Region]:
    """The regions of the tiles at grid positions (cols, rows) whose P(IDC) >= threshold.

    Tile (c, r) covers level-0 [c * w, (c + 1) * w) x [r * h, (r + 1) * h). Regions are ordered
    by decreasing area.
    """
    import shapely
    from skimage import measure

    cols, rows = np.asarray(cols, np.int64), np.asarray(rows, np.int64)
    p_idc = np.asarray(p_idc, np.float64)
    called = p_idc >= threshold
    if not called.any():
        return []
    c, r, p = cols[called], rows[called], p_idc[called]
    c0, r0 = c.min(), r.min()
    grid = np.zeros((r.max() - r0 + 1, c.max() - c0 + 1), bool)
    grid[r - r0, c - c0] = True
    labels = measure.label(grid, connectivity=1)
    component = labels[r - r0, c - c0]
    found = []
    for k in range(1, labels.max() + 1):
        members = component == k
        polygon = squares(c[members] * size[0], r[members] * size[1], size)
        polygon = shapely.simplify(polygon, 0)  # drop the collinear vertices between tiles
        if smooth_px > 0:
            polygon = polygon.buffer(smooth_px).buffer(-2 * smooth_px).buffer(smooth_px)
            polygon = shapely.make_valid(polygon)
        for part in getattr(polygon, "geoms", [polygon]):
            if part.is_empty or part.geom_type != "Polygon":
                continue
            found.append(
                Region(
                    polygon=part,
                    tiles=int(members.sum()),
                    mean_p_idc=float(p[members].mean()),
                    max_p_idc=float(p[members].max()),
                )
            )
    found.sort(key=lambda region: -region.polygon.area)
    return found


def union(regions: list[Region]):
    import shapely

    return shapely.union_all([r.polygon for r in regions]) if regions else shapely.Polygon()


def dice(a, b) -> float:
    """2 |a & b| / (|a| + |b|) of two shapely geometries (NaN when both are empty)."""
    total = a.area + b.area
    return float(2.0 * a.intersection(b).area / total) if total > 0 else float("nan")


def _ring(coords) -> list[list[float]]:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in coords]


def to_geojson(regions: list[Region], *, mpp: float, slide_name: str = "") -> dict:
    """The FeatureCollection of the regions, with QuPath's annotation properties."""
    from shapely.geometry.polygon import orient

    features = []
    for i, region in enumerate(regions, start=1):
        # RFC 7946's winding (exterior counter-clockwise in x, y), which QuPath does not need.
        polygon = orient(region.polygon, sign=1.0)
        area_um2 = polygon.area * mpp * mpp
        coordinates = [_ring(polygon.exterior.coords)] + [
            _ring(hole.coords) for hole in polygon.interiors
        ]
        key = f"{slide_name}:{polygon.wkb_hex}"
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(_NAMESPACE, key)),
                "geometry": {"type": "Polygon", "coordinates": coordinates},
                "properties": {
                    "objectType": "annotation",
                    "name": f"IDC {i}",
                    "classification": {"name": CLASSIFICATION, "color": list(COLOUR)},
                    "isLocked": False,
                    "measurements": {
                        "Mean P(IDC)": round(region.mean_p_idc, 6),
                        "Max P(IDC)": round(region.max_p_idc, 6),
                        "Tiles": region.tiles,
                        "Area um^2": round(area_um2, 1),
                        "Area mm^2": round(area_um2 / 1e6, 6),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    path: str | os.PathLike,
    regions: list[Region],
    *,
    mpp: float,
    slide_name="",
    extra_features=(),
):
    """The regions' FeatureCollection, compact, with `extra_features` after them (QuPath tile
    objects: `slide_outputs.tile_features`)."""
    collection = to_geojson(regions, mpp=mpp, slide_name=slide_name)
    collection["features"] += extra_features
    with open(path, "w") as f:
        json.dump(collection, f, separators=(",", ":"))
        f.write("\n")
