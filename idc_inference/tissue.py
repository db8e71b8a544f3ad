"""Tissue detection on a low-resolution thumbnail: Otsu's threshold on saturation.

    mask = detect_tissue(thumbnail.image, thumbnail.mpp)     # TissueMask: bool [h, w], ...
    fraction = tile_tissue_fractions(mask.mask, left, top, width, height)   # per tile

H&E-stained tissue is coloured; glass, the slide background, is white or light grey, and so
are regions outside the scanned area (OpenSlide's transparent pixels, made white when read).
Saturation (HSV) separates them far better than brightness, which would call pale fat and
stroma background and dark debris tissue. The steps, all sizes in micrometres so that the
result does not depend on the thumbnail's resolution:

1. saturation, lightly smoothed (Gaussian, sigma `SMOOTHING_UM`) against scanner noise;
2. Otsu's threshold of it (scikit-image's `threshold_otsu`), never below `MIN_SATURATION`, so
   that a slide without tissue, whose histogram is glass and noise only, gives an empty mask
   instead of a split of its noise;
3. hysteresis (`apply_hysteresis_threshold`): pixels above Otsu's threshold seed the tissue,
   which grows through connected pixels above half of it. Otsu alone splits the saturated
   tumour from the pale tissue around it when the glass is uniformly white (one spike at zero
   saturation): on the demo slide it left out 14-21% of the Kaggle patches, mostly fat, whose thin
   membranes are pale at 8 um per pixel. Half the threshold, reached only through tissue,
   takes them in without taking in glass (`tests/test_slides.py`: 97.6% of the patches kept);
4. a closing (`CLOSING_UM`) joins membranes, specks smaller than `MIN_OBJECT_UM2` go, holes
   smaller than `MAX_HOLE_UM2` (lumina, fat vacuoles) are filled.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# The floor of the Otsu threshold. Tissue in the Kaggle patches has a median saturation of about
# 0.35 (0.11 at the 5th percentile; patient 8955 in data/demo_slide), glass under 0.03.
MIN_SATURATION = 0.08
SMOOTHING_UM = 4.0
CLOSING_UM = 16.0
MIN_OBJECT_UM2 = 100.0 * 100.0  # dust
MAX_HOLE_UM2 = 100.0 * 100.0  # a quarter of a tile: lumina and fat vacuoles, not tissue gaps


@dataclasses.dataclass
class TissueMask:
    mask: np.ndarray  # bool [h, w], True where tissue
    threshold: float  # the saturation threshold used
    otsu_threshold: float | None  # Otsu's own value (None when the image has one saturation)
    mpp: float  # micrometres per mask pixel

    @property
    def area_mm2(self) -> float:
        return float(self.mask.sum()) * (self.mpp / 1000.0) ** 2

    def describe(self) -> dict:
        return {
            "method": "HSV saturation, Gaussian sigma "
            f"{SMOOTHING_UM:g} um; hysteresis between Otsu's threshold (floor {MIN_SATURATION}) "
            f"and half of it; closing {CLOSING_UM:g} um; specks < {MIN_OBJECT_UM2:.0f} um2 "
            f"removed, holes < {MAX_HOLE_UM2:.0f} um2 filled (scikit-image)",
            "saturation_threshold": self.threshold,
            "otsu_threshold": self.otsu_threshold,
            "mask_mpp": self.mpp,
            "mask_shape": list(self.mask.shape),
        }


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of RGB uint8 [h, w, 3] (0 where the pixel is black)."""
    high = rgb.max(axis=-1).astype(np.float32)
    low = rgb.min(axis=-1).astype(np.float32)
    return np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0).astype(np.float32)


def detect_tissue(rgb: np.ndarray, mpp: float) -> TissueMask:
    """The tissue mask of a thumbnail `rgb` (uint8 [h, w, 3]) of `mpp` micrometres per pixel."""
    from skimage import filters, morphology

    sat = saturation(rgb)
    sigma = SMOOTHING_UM / mpp
    if sigma >= 0.25:
        sat = filters.gaussian(sat, sigma=sigma, preserve_range=True).astype(np.float32)
    otsu = None
    if sat.size and float(sat.max()) > float(sat.min()):
        otsu = float(filters.threshold_otsu(sat))
    high = max(otsu if otsu is not None else np.inf, MIN_SATURATION)
    if not np.isfinite(high) or not np.any(sat > high):
        return TissueMask(np.zeros(sat.shape, bool), float(MIN_SATURATION), otsu, mpp)
    mask = filters.apply_hysteresis_threshold(sat, high / 2.0, high)
    radius = int(round(CLOSING_UM / mpp))
    if radius >= 1:
        mask = morphology.closing(mask, morphology.disk(radius))
    pixel_um2 = mpp * mpp
    mask = morphology.remove_small_objects(mask, max_size=int(MIN_OBJECT_UM2 / pixel_um2))
    mask = morphology.remove_small_holes(mask, max_size=int(MAX_HOLE_UM2 / pixel_um2))
    return TissueMask(mask=mask, threshold=high, otsu_threshold=otsu, mpp=mpp)


def tile_tissue_fractions(
    mask: np.ndarray,
    left: np.ndarray,
    top: np.ndarray,
    width: float,
    height: float,
) -> np.ndarray:
    """The fraction of each tile that is tissue; tiles in mask pixels (float corners), [N].

    A summed-area table makes each tile O(1). A tile's box is rounded to whole mask pixels;
    the part of a tile outside the mask (beyond the slide's edge) counts as background.
    """
    h, w = mask.shape
    table = np.zeros((h + 1, w + 1), np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    x0 = np.clip(np.round(left).astype(np.int64), 0, w)
    y0 = np.clip(np.round(top).astype(np.int64), 0, h)
    x1 = np.clip(np.round(left + width).astype(np.int64), 0, w)
    y1 = np.clip(np.round(top + height).astype(np.int64), 0, h)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    area = max(1.0, float(np.round(width)) * float(np.round(height)))
    return (inside / area).astype(np.float32)
