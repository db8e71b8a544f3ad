"""Rebuilds the 245-patient data behind results/real_subset from the Kaggle download.

    python data/make_idc_245.py --kaggle=~/Downloads/archive.zip
    # -> data/idc_245/subset/IDC_regular_ps50_idx5/<patient>/<class>/<file>.png  15,718 patches
    #    data/idc_245/slides/IDC_regular_ps50_idx5/<patient>/<class>/<file>.png  17,967 patches
    python reproduce.py --workdir=results/real_subset --config.data.dataset=kaggle_idc \\
        --config.data.manual_dir=data/idc_245/subset ...   # the command at the top of its report

The project's figures were made on real patches of 245 of the Kaggle set's 279 patients gathered
from public copies of the set (../shared/data/README.md of the machine they were made on): the
*subset* (15,718 patches; a patient with more than 500 patches there is a class-stratified sample
of 250) and the *slides* (the other 17,967 patches of 20 of those patients; with the subset they
make 27 whole slides). No rule rebuilds that selection, so its file names are committed,
compressed, in `idc_245/files.txt.gz` (one `<part> <file name>` per line; a Kaggle file name
carries its patient and class), with the counts and digests of each part in
`idc_245/manifest.json`. This script copies exactly those files out of the Kaggle download, a zip
(`archive.zip`, `breast-histopathology-images.zip`, `IDC_regular_ps50_idx5.zip`) or its extracted
folder. The download holds every patient folder twice (at its top level and again under
`IDC_regular_ps50_idx5/`); a file is taken once. Then it checks what it wrote: every listed file
found, the counts of patches, patients and IDC patches of each part, and the digests: the same
bytes as the files behind the results, or else the same pixels (a lossless re-encoding), or else
a warning that the figures may differ.

    python data/make_idc_245.py --record SUBSET.zip SLIDES.zip

wrote the list and the manifest from the two zips the results were made from (kept to document
how; rerunning it with other zips changes what this script rebuilds).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import pathlib
import shutil
import sys
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from input_pipeline import sources  # noqa: E402
from input_pipeline.patches import FILE_NAME_PATTERN, Counts  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent / "idc_245"
LIST_FILE = HERE / "files.txt.gz"
MANIFEST_FILE = HERE / "manifest.json"
PARTS = ("subset", "slides")
TOP = "IDC_regular_ps50_idx5"  # the folder the patient folders sit in, as in the Kaggle zip


class RebuildError(Exception):
    """The download cannot give the listed files; the message says which and what to do."""


def relative_path(name: str) -> str:
    """`<patient>/<class>/<name>` of a Kaggle file name."""
    match = FILE_NAME_PATTERN.match(name)
    if match is None:
        raise ValueError(f"not a Kaggle patch name: {name}")
    patient, _, _, label = match.groups()
    return f"{patient}/{label}/{name}"


def read_list(path: pathlib.Path = LIST_FILE) -> dict[str, list[str]]:
    """part -> its file names, as listed."""
    names: dict[str, list[str]] = collections.defaultdict(list)
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.strip():
                part, name = line.split()
                names[part].append(name)
    return dict(names)


def _pixels(data: bytes) -> bytes:
    from PIL import Image  # noqa: PLC0415

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return f"{image.mode} {image.size}\n".encode() + image.tobytes()


def describe(files: dict[str, bytes]) -> dict:
    """Counts and digests of one part, from {file name: file bytes}."""
    file_digest, pixel_digest = hashlib.sha256(), hashlib.sha256()
    for name in sorted(files):
        file_digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        pixel_digest.update(name.encode() + b"\0" + hashlib.sha256(_pixels(files[name])).digest())
    labels = [int(FILE_NAME_PATTERN.match(n).group(4)) for n in files]
    patients = {int(FILE_NAME_PATTERN.match(n).group(1)) for n in files}
    return {
        "patches": len(files),
        "patients": len(patients),
        "idc_patches": sum(labels),
        "file_sha256": file_digest.hexdigest(),
        "pixel_sha256": pixel_digest.hexdigest(),
    }


def _read_zip_patches(path: pathlib.Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {
            member.rsplit("/", 1)[-1]: archive.read(member)
            for member in archive.namelist()
            if FILE_NAME_PATTERN.match(member.rsplit("/", 1)[-1])
        }


def record(
    subset_zip: pathlib.Path,
    slides_zip: pathlib.Path,
    *,
    list_file: pathlib.Path = LIST_FILE,
    manifest_file: pathlib.Path = MANIFEST_FILE,
) -> dict:
    """Writes the list and the manifest from the two zips; returns the manifest."""
    list_file.parent.mkdir(parents=True, exist_ok=True)
    manifest, lines = {}, []
    for part, path in zip(PARTS, (subset_zip, slides_zip)):
        files = _read_zip_patches(path)
        manifest[part] = {"from": path.name, **describe(files)}
        lines += [f"{part} {name}\n" for name in sorted(files, key=relative_path)]
    # mtime=0: the same list gives the same bytes, so the file changes only when the list does.
    with open(list_file, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write("".join(lines).encode())
    manifest_file.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _kaggle_source(kaggle: pathlib.Path) -> pathlib.Path:
    kaggle = kaggle.expanduser()
    if kaggle.is_file() and kaggle.suffix.lower() == ".zip":
        return kaggle
    if kaggle.is_dir():
        found = sources.find_sources(kaggle)
        if found:
            return found[0]
    raise RebuildError(
        f"no Kaggle download at {kaggle}: give --kaggle the zip "
        f"({', '.join(sources.KNOWN_ZIP_NAMES)}) or the folder it was extracted to; the download "
        f"is at {sources.KAGGLE_URL}"
    )


def rebuild(
    kaggle: pathlib.Path,
    output: pathlib.Path,
    *,
    list_file: pathlib.Path = LIST_FILE,
    manifest_file: pathlib.Path = MANIFEST_FILE,
    log=print,
) -> dict:
    """Copies the listed files out of the Kaggle download into output/<part>/; returns a report
    per part ({"patches", "patients", "idc_patches", "content"}). Raises RebuildError when a
    listed file is missing or a count differs."""
    source = _kaggle_source(pathlib.Path(kaggle))
    wanted = read_list(list_file)
    manifest = json.loads(pathlib.Path(manifest_file).read_text())
    log(f"listing {source} ...")
    entries = {entry.file_name: entry for entry in sources.scan(source, Counts())}
    missing = [name for names in wanted.values() for name in names if name not in entries]
    if missing:
        raise RebuildError(
            f"{len(missing):,} of the {sum(map(len, wanted.values())):,} listed patches are not "
            f"in {source} (first: {', '.join(missing[:3])}): is it the Kaggle set's download "
            f"({sources.KAGGLE_URL}), whole?"
        )
    archive = zipfile.ZipFile(source) if source.suffix.lower() == ".zip" else None
    report = {}
    try:
        for part in PARTS:
            target = pathlib.Path(output) / part
            if target.exists():
                shutil.rmtree(target)
            files = {}
            for name in wanted.get(part, []):
                entry = entries[name]
                data = (
                    archive.read(entry.member)
                    if archive is not None
                    else pathlib.Path(entry.source).read_bytes()
                )
                path = target / TOP / relative_path(name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                files[name] = data
            report[part] = check_part(part, files, manifest[part])
            log(
                f"{target}: {report[part]['patches']:,} patches of {report[part]['patients']} "
                f"patients ({report[part]['idc_patches']:,} IDC), {report[part]['content']}"
            )
    finally:
        if archive is not None:
            archive.close()
    return report


def check_part(part: str, files: dict[str, bytes], expected: dict) -> dict:
    """The part's counts against the manifest (an error if they differ), and its content:
    'identical files', 'the same pixels in other files', or a warning."""
    got = describe(files)
    for key in ("patches", "patients", "idc_patches"):
        if got[key] != expected[key]:
            raise RebuildError(
                f"{part}: {got[key]:,} {key.replace('_', ' ')} rebuilt, {expected[key]:,} expected"
            )
    if got["file_sha256"] == expected["file_sha256"]:
        content = "identical files to those behind results/real_subset"
    elif got["pixel_sha256"] == expected["pixel_sha256"]:
        content = "the same pixels as the files behind results/real_subset (other PNG encoding)"
    else:
        content = (
            "WARNING: other pixels than the files behind results/real_subset; figures trained "
            "on them may differ"
        )
    return {**{k: got[k] for k in ("patches", "patients", "idc_patches")}, "content": content}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kaggle", type=pathlib.Path, help="the Kaggle download: zip or folder")
    parser.add_argument(
        "--output", type=pathlib.Path, default=HERE, help="where subset/ and slides/ go"
    )
    parser.add_argument(
        "--record",
        nargs=2,
        type=pathlib.Path,
        metavar=("SUBSET_ZIP", "SLIDES_ZIP"),
        help="write the list and manifest from these zips instead",
    )
    args = parser.parse_args(argv)
    if args.record:
        manifest = record(*args.record)
        print(f"wrote {LIST_FILE} and {MANIFEST_FILE}: " + json.dumps(manifest))
        return 0
    if args.kaggle is None:
        parser.error("--kaggle is required: the Kaggle download (zip or folder)")
    try:
        rebuild(args.kaggle, args.output)
    except RebuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
