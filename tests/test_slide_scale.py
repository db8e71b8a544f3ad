"""A slide's scale is believed only when a microscope could have written it (slide_scale.py).

Every file is written here with tifffile: generic TIFFs whose resolution tags hold an image
program's default (72, 96, 150, 300 dpi), a resolution without a unit, a scale coarser than the
model's 4 um/px, and Aperio-like TIFFs (an "Aperio Image Library" ImageDescription, which
OpenSlide's aperio driver reads for `openslide.objective-power` and `openslide.mpp-x`).
"""

import pathlib

import numpy as np
import pytest

from idc_inference import slide_files, slide_maps, slide_scale
from tests.test_slides import assert_refused, map_program

GLASS = np.full((250, 300, 3), 242, np.uint8)  # the 300 x 250 image, no tissue


def write_generic(path: pathlib.Path, **resolution) -> pathlib.Path:
    import tifffile

    tifffile.imwrite(path, GLASS, tile=(256, 256), photometric="rgb", metadata=None, **resolution)
    return path


def write_aperio(path: pathlib.Path, app_mag: int, mpp: float) -> pathlib.Path:
    import tifffile

    description = (
        f"Aperio Image Library v10.0.50\n300x250 [0,0 300x250] (256x256) JPEG Q=30"
        f"|AppMag = {app_mag}|MPP = {mpp}"
    )
    tifffile.imwrite(
        path, GLASS, tile=(256, 256), photometric="rgb", metadata=None, description=description
    )
    return path


def refusal(path: pathlib.Path, **kwargs) -> str:
    with pytest.raises(slide_files.SlideError) as caught:
        slide_files.open_slide(path, **kwargs)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


@pytest.mark.parametrize("dpi", [72, 96, 150, 300])
def test_an_image_programs_default_resolution_is_no_scale(tmp_path, dpi):
    path = write_generic(tmp_path / "s.tiff", resolution=(dpi, dpi), resolutionunit="INCH")
    message = refusal(path)
    assert f"{dpi} dpi" in message and "no scale" in message and "--mpp" in message
    # The user's scale is taken instead.
    assert slide_files.open_slide(path, mpp=0.5).scale.mpp == 0.5


def test_72_dpi_in_pixels_per_centimetre_is_still_72_dpi(tmp_path):
    per_cm = 72 / 2.54
    path = write_generic(
        tmp_path / "s.tiff", resolution=(per_cm, per_cm), resolutionunit="CENTIMETER"
    )
    assert "72 dpi" in refusal(path)
    assert slide_scale.default_dpi(25400 / 72) == 72
    assert slide_scale.default_dpi(0.25) is None and slide_scale.default_dpi(4.0) is None


def test_a_resolution_without_unit_is_no_scale(tmp_path):
    path = write_generic(tmp_path / "s.tiff", resolution=(72, 72), resolutionunit="NONE")
    message = refusal(path)
    assert "does not say its scale" in message and "ResolutionUnit none" in message
    assert "--mpp" in message


@pytest.mark.parametrize("mpp, refused", [(8.0, True), (4.25, True), (4.19, False), (4.0, False)])
def test_a_slide_coarser_than_the_model_scale_is_refused(tmp_path, mpp, refused):
    per_cm = 1e4 / mpp
    path = write_generic(
        tmp_path / "s.tiff", resolution=(per_cm, per_cm), resolutionunit="CENTIMETER"
    )
    if not refused:  # within 5%: read, its finest level upsampled that little
        assert slide_files.open_slide(path).scale.mpp == pytest.approx(mpp, rel=1e-6)
        return
    message = refusal(path)
    assert f"its finest level, {mpp:g} um/px, is coarser than the 4 um/px" in message
    assert "--mpp" in message


def test_a_given_scale_coarser_than_the_model_is_refused_too(tmp_path):
    path = write_generic(tmp_path / "s.tiff", resolution=(1250, 1250), resolutionunit="CENTIMETER")
    assert "the given scale, 8 um/px, is coarser" in refusal(path, mpp=8.0)
    assert slide_files.open_slide(path, mpp=2.0).scale.source == "given (--mpp)"


@pytest.mark.parametrize(
    "app_mag, mpp, warned",
    [(40, 2.0, True), (20, 0.1, True), (40, 0.2520, False), (20, 0.499, False)],
)
def test_an_objective_power_that_contradicts_the_scale_is_a_warning(tmp_path, app_mag, mpp, warned):
    path = write_aperio(tmp_path / "s.svs", app_mag, mpp)
    slide = slide_files.open_slide(path)
    assert slide.vendor == "aperio" and slide.objective_power == str(app_mag)
    assert slide.scale.mpp == pytest.approx(mpp)
    if not warned:
        assert slide.warnings == []
        return
    (warning,) = slide.warnings
    ratio = mpp * app_mag / 10
    assert f"{app_mag}x" in warning and f"{max(ratio, 1 / ratio):.1f}x apart" in warning
    # The map goes on, and its summary carries the warning (the slide is glass: no model needed).
    summary = slide_maps.map_slide(slide, tmp_path / "out", None)
    assert warning in summary["warnings"] and summary["tiles"]["tissue"] == 0


def test_program_refuses_a_72_dpi_tiff_in_one_line(tmp_path):
    path = write_generic(tmp_path / "photo.tiff", resolution=(72, 72), resolutionunit="INCH")
    out = tmp_path / "out"
    result = map_program(f"--output_dir={out}", path)
    assert_refused(result, out, str(path), "72 dpi", "--mpp")
