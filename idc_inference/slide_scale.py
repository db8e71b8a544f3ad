"""A slide's scale, and whether it can be believed: micrometres per pixel from OpenSlide's
properties or the user, checked against what the model can read (`slide_files.Slide` opens).

    scale, missing = read_scale(properties, given_mpp=None)    # Scale, or None and why
    problem = coarseness_problem(scale)                         # None, or why it cannot be read
    warning = objective_power_warning(scale, properties)        # None, or a mismatch to report

Why each check:
- A generic TIFF whose resolution tags hold an image program's default (72, 96, 150 or 300 dots
  per inch) gets 353 to 85 um/px from OpenSlide, a scale no microscope has: a scan taken at that
  scale would be upsampled 20 to 90 times into a grid of meaningless tiles. Such a value is no
  scale at all, and so is a resolution without a unit (ResolutionUnit "none", which OpenSlide
  already turns into no `openslide.mpp-x`): both are refused until `--mpp` says the real scale.
- A slide whose finest level is coarser than the training scale (`KAGGLE_PATCH_MPP`, with
  `COARSE_TOLERANCE`) cannot be read at that scale: every tile would be an upsampling of fewer
  pixels than the network learnt from. Refused, whatever the source of the scale.
- Scanners record the objective power beside the scale; 10 / power is about the um/px a scanner
  of that power writes (40x: 0.25). More than `POWER_DISAGREEMENT` apart, one of the two is wrong:
  the map goes on (the scale is what is used) with a warning.
"""

from __future__ import annotations

import dataclasses
import math

from input_pipeline import KAGGLE_PATCH_MPP

# A finest level up to 5% coarser than the training scale is read (upsampled that little; the
# training scale itself is "about 4 um"); coarser is refused.
COARSE_TOLERANCE = 0.05
DEFAULT_DPI = (72, 96, 150, 300)  # image programs' defaults, never a microscope's scale
_DPI_SLACK = 1e-3  # 72 dpi written as 28.3465 pixels per centimetre is still 72 dpi
POWER_DISAGREEMENT = 2.0
MICROMETRES_PER_INCH = 25400.0
MPP_HINT = (
    "give its micrometres per pixel at full resolution with --mpp (0.25 for a 40x scan, 0.5 "
    "for 20x)"
)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Micrometres per level-0 pixel, and where the value came from."""

    mpp_x: float
    mpp_y: float
    source: str  # "slide properties (openslide.mpp-x/-y)" or "given (--mpp)"

    @property
    def mpp(self) -> float:
        """The mean of the two axes (scanners' pixels are square to within rounding)."""
        return (self.mpp_x + self.mpp_y) / 2.0


def _positive(value: float) -> bool:
    return value > 0 and math.isfinite(value)


def default_dpi(mpp: float) -> int | None:
    """The image-program default (72, 96, 150, 300 dpi) that `mpp` um/px is, or None."""
    for dpi in DEFAULT_DPI:
        if abs(mpp * dpi / MICROMETRES_PER_INCH - 1.0) <= _DPI_SLACK:
            return dpi
    return None


def read_scale(properties: dict, given_mpp: float | None) -> tuple[Scale | None, str | None]:
    """(the scale, None), or (None, why the slide has none); `given_mpp` (--mpp) wins."""
    if given_mpp is not None:
        if not _positive(given_mpp):
            return None, f"the given scale must be a positive number, got {given_mpp}"
        return Scale(float(given_mpp), float(given_mpp), "given (--mpp)"), None
    try:
        mpp_x = float(properties["openslide.mpp-x"])
        mpp_y = float(properties["openslide.mpp-y"])
    except (KeyError, ValueError):
        mpp_x = mpp_y = math.nan
    if not (_positive(mpp_x) and _positive(mpp_y)):
        why = "no openslide.mpp-x/-y property"
        if properties.get("tiff.ResolutionUnit") == "none" and "tiff.XResolution" in properties:
            why = "its TIFF resolution tags have no unit: ResolutionUnit none"
        return None, f"the slide does not say its scale ({why}); {MPP_HINT}"
    dpi = default_dpi(mpp_x)
    if dpi is not None and default_dpi(mpp_y) == dpi:
        return None, (
            f"the slide's resolution tags hold {dpi} dpi ({mpp_x:.1f} um/px), the default of "
            f"image software, not a microscope's scale: treated as no scale; {MPP_HINT}"
        )
    return Scale(mpp_x, mpp_y, "slide properties (openslide.mpp-x/-y)"), None


def coarseness_problem(scale: Scale, target_mpp: float = KAGGLE_PATCH_MPP) -> str | None:
    """Why a slide of this level-0 scale cannot be read at `target_mpp`, or None."""
    coarsest = max(scale.mpp_x, scale.mpp_y)
    if coarsest <= target_mpp * (1 + COARSE_TOLERANCE):
        return None
    what = "its finest level" if scale.source.startswith("slide") else "the given scale"
    return (
        f"{what}, {coarsest:.4g} um/px, is coarser than the {target_mpp:g} um/px the model "
        f"reads (every tile would be upsampled {coarsest / target_mpp:.1f}x): a slide scanned "
        f"that coarsely cannot be mapped. If the scale is wrong, {MPP_HINT}"
    )


def objective_power_warning(scale: Scale, properties: dict) -> str | None:
    """A warning when `openslide.objective-power` and the scale are more than 2x apart."""
    try:
        power = float(properties["openslide.objective-power"])
    except (KeyError, ValueError):
        return None
    if not _positive(power):
        return None
    expected = 10.0 / power
    ratio = scale.mpp / expected
    if 1.0 / POWER_DISAGREEMENT <= ratio <= POWER_DISAGREEMENT:
        return None
    return (
        f"the objective power ({power:g}x, about {expected:.3g} um/px) and the scale "
        f"({scale.mpp:.4g} um/px, {scale.source}) are {max(ratio, 1 / ratio):.1f}x apart; "
        "the map uses the scale: check it, and give the right one with --mpp if it is wrong"
    )
