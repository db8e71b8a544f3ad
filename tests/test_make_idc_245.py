"""data/make_idc_245.py: the 245-patient data rebuilt from a Kaggle download, exactly.

A stand-in of the download is made from real patches of the sample shipped in data/idc_sample,
laid out as Kaggle's archive is (every patient folder at the top level and again under
`IDC_regular_ps50_idx5/`), with patients the list does not name beside them.
"""

import gzip
import importlib.util
import io
import json
import pathlib
import zipfile

import pytest
from PIL import Image

from tests.conftest import EMBEDDED_SAMPLE, SHARED_DATA

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("make_idc_245", REPO / "data" / "make_idc_245.py")
make_idc_245 = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(make_idc_245)

SUBSET_PATIENTS, SLIDES_PATIENTS, OTHER_PATIENTS = ("8914", "8916"), ("8917",), ("8918", "8955")


def sample_files(patients) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for patient in patients
        for path in sorted((EMBEDDED_SAMPLE / patient).rglob("*.png"))
    }


def write_zip(path: pathlib.Path, files: dict[str, bytes], *, nested: bool) -> pathlib.Path:
    """A zip of `files` in the Kaggle layout; `nested` adds the archive's second copy."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            relative = make_idc_245.relative_path(name)
            archive.writestr(f"IDC_regular_ps50_idx5/{relative}", data)
            if nested:
                archive.writestr(relative, data)
    return path


@pytest.fixture
def listed(tmp_path):
    """The list and manifest recorded from a 'subset' and a 'slides' zip of real patches."""
    subset, slides = sample_files(SUBSET_PATIENTS), sample_files(SLIDES_PATIENTS)
    list_file, manifest_file = tmp_path / "files.txt.gz", tmp_path / "manifest.json"
    make_idc_245.record(
        write_zip(tmp_path / "subset.zip", subset, nested=False),
        write_zip(tmp_path / "slides.zip", slides, nested=False),
        list_file=list_file,
        manifest_file=manifest_file,
    )
    return {"subset": subset, "slides": slides}, list_file, manifest_file


def rebuild(kaggle, tmp_path, listed):
    _, list_file, manifest_file = listed
    return make_idc_245.rebuild(
        kaggle,
        tmp_path / "out",
        list_file=list_file,
        manifest_file=manifest_file,
        log=lambda _: None,
    )


def kaggle_download(listed, tmp_path, **replaced) -> pathlib.Path:
    """The stand-in download: the listed patches (some replaced), other patients, twice."""
    files = {**listed[0]["subset"], **listed[0]["slides"], **sample_files(OTHER_PATIENTS)}
    files.update(replaced)
    return write_zip(tmp_path / "archive.zip", files, nested=True)


def test_rebuilds_exactly_the_listed_files_from_the_zip_and_from_its_folder(listed, tmp_path):
    kaggle = kaggle_download(listed, tmp_path)
    report = rebuild(kaggle, tmp_path, listed)
    for part, files in listed[0].items():
        root = tmp_path / "out" / part / "IDC_regular_ps50_idx5"
        written = {path.name: path.read_bytes() for path in root.rglob("*.png")}
        assert written == files, part  # every listed file, byte for byte, and nothing else
        assert report[part]["patches"] == len(files)
        assert report[part]["content"].startswith("identical files")
    assert report["subset"]["patients"] == len(SUBSET_PATIENTS)
    extracted = tmp_path / "extracted"
    zipfile.ZipFile(kaggle).extractall(extracted)
    again = rebuild(extracted, tmp_path, listed)
    assert again == report


def test_other_encodings_of_the_same_pixels_pass_and_other_pixels_warn(listed, tmp_path):
    name, data = next(iter(listed[0]["subset"].items()))
    pixels = Image.open(io.BytesIO(data))
    reencoded = io.BytesIO()
    pixels.save(reencoded, format="PNG", compress_level=0)
    assert reencoded.getvalue() != data
    report = rebuild(
        kaggle_download(listed, tmp_path, **{name: reencoded.getvalue()}), tmp_path, listed
    )
    assert report["subset"]["content"].startswith("the same pixels")
    assert report["slides"]["content"].startswith("identical files")
    changed = pixels.copy()
    changed.putpixel((0, 0), (0, 0, 0))
    other = io.BytesIO()
    changed.save(other, format="PNG")
    (tmp_path / "archive.zip").unlink()
    report = rebuild(
        kaggle_download(listed, tmp_path, **{name: other.getvalue()}), tmp_path, listed
    )
    assert report["subset"]["content"].startswith("WARNING: other pixels")


def test_a_download_without_a_listed_file_is_refused_naming_it(listed, tmp_path):
    kaggle = kaggle_download(listed, tmp_path)
    missing = sorted(listed[0]["slides"])[0]
    with zipfile.ZipFile(kaggle) as archive, zipfile.ZipFile(tmp_path / "cut.zip", "w") as cut:
        for info in archive.infolist():
            if not info.filename.endswith(missing):
                cut.writestr(info, archive.read(info))
    with pytest.raises(
        make_idc_245.RebuildError, match=rf"^1 of the \d+ listed .*\(first: {missing}"
    ):
        rebuild(tmp_path / "cut.zip", tmp_path, listed)
    with pytest.raises(make_idc_245.RebuildError, match="no Kaggle download at"):
        rebuild(tmp_path / "nowhere", tmp_path, listed)


def test_the_committed_list_is_the_data_behind_the_results():
    names = make_idc_245.read_list()
    manifest = json.loads(make_idc_245.MANIFEST_FILE.read_text())
    assert {part: len(files) for part, files in names.items()} == {
        "subset": 15_718,
        "slides": 17_967,
    }
    for part, files in names.items():
        assert manifest[part]["patches"] == len(set(files)) == len(files)
        patients = {make_idc_245.relative_path(name).split("/")[0] for name in files}
        assert manifest[part]["patients"] == len(patients)
    assert len({*names["subset"], *names["slides"]}) == 15_718 + 17_967
    with gzip.open(make_idc_245.LIST_FILE, "rt") as f:
        assert f.readline().split()[0] == "subset"
    zips = {
        "subset": SHARED_DATA / "idc_subset" / "IDC_regular_ps50_idx5.zip",
        "slides": SHARED_DATA / "idc_slides" / "IDC_regular_ps50_idx5_rest.zip",
    }
    if not all(path.is_file() for path in zips.values()):
        pytest.skip("the zips the results were made from are not beside the repository")
    for part, path in zips.items():
        with zipfile.ZipFile(path) as archive:
            in_zip = {member.rsplit("/", 1)[-1] for member in archive.namelist()}
        assert in_zip == set(names[part]), part
