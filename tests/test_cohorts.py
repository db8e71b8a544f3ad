"""Cohorts of slides: finding them, sharding them, resuming, slides.csv, several devices, and the
QuPath tile objects (map_slide.py, idc_inference/cohorts.py, slide_table.py).

The slides are pieces of the demo slide (data/demo_slide/8955.tiff, real patches of patient
8955), written here as pyramidal TIFFs, and a file of garbage bytes named .svs; the model is the
session's tiny run (tests/test_inference.py).
"""

import csv
import json
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

from idc_inference import cohorts, slide_files, slide_maps, slide_outputs, slide_table
from idc_inference.predictor import Predictor
from tests.commands import REPO, subprocess_environment
from tests.test_inference import trained_tiny_workdir
from tests.test_slides import DEMO_SLIDE, map_program, write_tiff

# Two pieces of the demo slide with tissue (level-0 x, y, width, height at 4 um/px).
PIECES = {"a": (0, 0, 1000, 800), "b": (1000, 500, 900, 700)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> pathlib.Path:
    return trained_tiny_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def demo_pixels() -> np.ndarray:
    import openslide

    with openslide.OpenSlide(str(DEMO_SLIDE)) as slide:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions))[..., :3]


def write_piece(demo_pixels, path: pathlib.Path, name: str) -> pathlib.Path:
    x, y, w, h = PIECES[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tiff(path, demo_pixels[y : y + h, x : x + w], mpp=4.0)


@pytest.fixture
def cohort(tmp_path, demo_pixels) -> dict[str, pathlib.Path]:
    """slides/: a.tiff, sub/b.tiff (good), bad.svs (garbage bytes), and notes that are not
    slides."""
    folder = tmp_path / "slides"
    slides = {
        "a": write_piece(demo_pixels, folder / "a.tiff", "a"),
        "b": write_piece(demo_pixels, folder / "sub" / "b.tiff", "b"),
        "bad": folder / "bad.svs",
    }
    slides["bad"].write_bytes(np.random.default_rng(0).bytes(20_000))
    (folder / "README.txt").write_text("scanned 2026-12-01\n")
    return slides


def read_table(out: pathlib.Path) -> dict[str, dict]:
    with open(out / slide_table.TABLE_NAME, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(slide_table.COLUMNS)
    return {pathlib.Path(row["file"]).stem: row for row in rows}


def summary_of(out: pathlib.Path, stem: str) -> dict:
    return json.loads((out / f"{stem}.summary.json").read_text())


def mapped_slides(stdout: str) -> list[str]:
    """The slides a cohort run's progress lines name ("slide i of n: <path> (...")."""
    lines = [line for line in stdout.splitlines() if line.startswith("slide ") and " of " in line]
    return [line.split(": ", 1)[1].split(" (")[0] for line in lines]


# ----------------------------------------------------------------------------- finding


def test_find_slides_searches_folders_expands_globs_and_takes_named_files(tmp_path):
    def touch(relative):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    a, b = touch("slides/a.svs"), touch("slides/deep/er/b.TIFF")
    touch("slides/.trash/c.svs")  # hidden: left out
    touch("slides/README.txt")
    touch("slides/label.png")
    notes = touch("elsewhere/named.bin")  # named on its own: taken, OpenSlide will judge it
    d, e = touch("globbed/d.ndpi"), touch("globbed/e.mrxs")
    touch("globbed/e/Slidedat.ini")  # MIRAX's data folder: not a slide file
    found = cohorts.find_slides(
        [str(tmp_path / "slides"), str(notes), str(tmp_path / "globbed" / "*"), str(a)]
    )
    assert found == sorted([a, b, notes, d, e], key=str)  # a once, although named twice


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["missing"], "no such file or folder"),
        (["empty"], "no slide files in this folder"),
        (["empty/*.svs"], "the pattern matches no file"),
        (["x/1.svs", "y/1.ndpi"], "would both write 1.*"),
    ],
)
def test_find_slides_refuses_what_names_no_slide_or_would_clash(tmp_path, arguments, words):
    (tmp_path / "empty").mkdir()
    for relative in ("x/1.svs", "y/1.ndpi"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    with pytest.raises(cohorts.CohortError, match=words.replace("*", r"\*")):
        cohorts.find_slides([str(tmp_path / a) for a in arguments])


# ----------------------------------------------------------------------------- sharding


def test_shards_partition_the_cohort_exactly_and_evenly():
    slides = [pathlib.Path(f"/scans/{site}/{n:04d}.svs") for site in "xyz" for n in range(7)]
    for count in (1, 2, 3, 4, 8, 30):
        shards = [cohorts.shard(slides, i, count) for i in range(count)]
        together = [path for part in shards for path in part]
        assert sorted(together) == sorted(slides)  # every slide, each once
        sizes = [len(part) for part in shards]
        assert max(sizes) - min(sizes) <= 1
        shuffled = random.Random(count).sample(slides, len(slides))
        assert [cohorts.shard(shuffled, i, count) for i in range(count)] == shards


@pytest.mark.parametrize("text, expected", [("0/1", (0, 1)), ("3/16", (3, 16))])
def test_parse_shard(text, expected):
    assert cohorts.parse_shard(text) == expected


@pytest.mark.parametrize("text", ["2/2", "-1/4", "1", "a/b", "1/0", "1/2/3"])
def test_parse_shard_refuses_what_is_not_i_of_n(text):
    with pytest.raises(cohorts.CohortError, match="SLURM_ARRAY_TASK_ID"):
        cohorts.parse_shard(text)


# ----------------------------------------------------------------------------- settings


def test_settings_say_what_changed_and_ignore_the_code_version():
    model = {"source": "weights", "name": "run", "path": "/m/run.safetensors", "step": 10}
    model |= {"tta": True, "code_version": {"git_commit": "abc"}}
    slide = {"path": "/s/a.svs", "dimensions": [100, 80], "mpp_x": 0.25, "mpp_y": 0.25}
    base = dict(threshold=0.5, context_stage=None, min_tissue=0.1, geojson_tiles=False)
    before = cohorts.settings(model=model, slide=slide, **base)
    newer_code = model | {"code_version": {"git_commit": "def"}}
    moved = slide | {"path": "/mnt/other/a.svs"}  # the same file seen from another host
    assert cohorts.changes(before, cohorts.settings(model=newer_code, slide=moved, **base)) == []
    after = cohorts.settings(
        model=model | {"step": 20, "tta": False},
        slide=slide | {"mpp_x": 0.5, "mpp_y": 0.5},
        **base | {"threshold": 0.9, "geojson_tiles": True},
    )
    assert cohorts.changes(before, after) == [
        "model step 10 -> 20",
        "threshold 0.5 -> 0.9",
        "tta True -> False",
        "geojson tiles False -> True",
        "slide mpp [0.25, 0.25] -> [0.5, 0.5]",
    ]


def test_progress_estimates_the_time_left_from_the_slides_mapped():
    progress = cohorts.Progress(5)
    assert progress.line(1, pathlib.Path("a.svs")).endswith("ETA after the first map)")
    progress.record("mapped", 30.0)
    progress.record("skipped", 0.01)  # a skipped slide says nothing about the time of a map
    line = progress.line(3, pathlib.Path("c.svs"))
    assert line == "slide 3 of 5: c.svs (1 mapped, 1 skipped, 0 failed; ETA 1 min 30 s)"
    assert [cohorts.duration(s) for s in (35, 250, 3900)] == ["35 s", "4 min 10 s", "1 h 05 min"]


def test_tables_written_at_once_by_many_shards_hold_every_slide(tmp_path):
    """Shards rewrite slides.csv concurrently (threads here; the lock is per open file, as
    between processes): every table written is whole, and nothing half-written is left."""
    import threading

    summary = {
        "slide": {"path": "s.svs"},
        "tissue_area_mm2": 1.5,
        "idc_tissue_area_mm2": 0.5,
        "idc_fraction_of_tissue": 1 / 3,
        "idc_regions": 2,
        "threshold": 0.5,
    }
    for i in range(40):
        record = summary | {"slide": {"path": f"/slides/{i:02d}.svs"}}
        (tmp_path / f"{i:02d}.summary.json").write_text(json.dumps(record))
    slide_table.record_failure(tmp_path, pathlib.Path("/slides/40.svs"), "/slides/40.svs: bad")
    tables = []

    def shard():
        for _ in range(10):
            slide_table.write_table(tmp_path)
            tables.append(read_table(tmp_path))

    threads = [threading.Thread(target=shard) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tables) == 40 and all(len(table) == 41 for table in tables)
    assert tables[-1]["07"]["idc_fraction"] == "0.333333" and tables[-1]["40"]["status"] == "failed"
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".slides.csv.lock"]


# ----------------------------------------------------------------------------- a cohort run


def test_cohort_maps_the_good_slides_lists_the_bad_one_and_resumes(
    tmp_path, tiny_run, cohort, demo_pixels
):
    out = tmp_path / "maps"
    folder = cohort["a"].parent
    run = lambda *flags: map_program(f"--workdir={tiny_run}", f"--output_dir={out}", *flags)  # noqa: E731

    # Two shards map it between them: each slide by exactly one.
    shards = [run(f"--shard={i}/2", folder) for i in range(2)]
    named = [mapped_slides(result.stdout) for result in shards]
    assert sorted(named[0] + named[1]) == sorted(str(path) for path in cohort.values())
    for result, slides in zip(shards, named):
        failed = str(cohort["bad"]) in slides
        assert result.returncode == (1 if failed else 0), result.stderr[-3000:]
        assert ("failed: " in result.stderr) == failed

    table = read_table(out)
    assert set(table) == {"a", "b", "bad"}
    for stem in ("a", "b"):
        summary, row = summary_of(out, stem), table[stem]
        assert row["status"] == "mapped" and row["reason"] == ""
        assert row["file"] == str(cohort[stem]) == summary["slide"]["path"]
        for column, key in [
            ("tissue_mm2", "tissue_area_mm2"),
            ("idc_mm2", "idc_tissue_area_mm2"),
            ("idc_fraction", "idc_fraction_of_tissue"),
            ("largest_region_mm2", "largest_idc_region_mm2"),
            ("mean_p_idc", "p_idc_mean"),
            ("max_p_idc", "p_idc_max"),
            ("threshold", "threshold"),
            ("seconds", "seconds_total"),
        ]:
            assert float(row[column]) == pytest.approx(summary[key], rel=1e-5), column
        assert int(row["regions"]) == summary["idc_regions"]
        assert row["model"] == summary["model"]["name"] == tiny_run.name
        with open(out / f"{stem}.tiles.csv", newline="") as f:
            p_idc = [float(r["p_idc"]) for r in csv.DictReader(f)]
        assert len(p_idc) > 20 and summary["p_idc_mean"] == pytest.approx(np.mean(p_idc), abs=1e-6)
        assert summary["p_idc_max"] == pytest.approx(max(p_idc), abs=1e-6)
    assert table["bad"]["status"] == "failed"
    assert table["bad"]["reason"].startswith(f"{cohort['bad']}: not a slide file")
    assert not (out / "bad.summary.json").exists()

    # A rerun skips the two finished slides and lists the bad one again.
    before = {stem: (out / f"{stem}.summary.json").read_bytes() for stem in ("a", "b")}
    rerun = run(folder)
    assert rerun.returncode == 1, rerun.stderr[-3000:]
    assert rerun.stdout.count("skipped: mapped before with the same model and settings") == 2
    assert "slide 3 of 3" in rerun.stdout and "2 skipped, 1 failed" in rerun.stdout
    assert f"failed: {cohort['bad']}: not a slide file" in rerun.stderr
    assert rerun.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 slides failed")
    assert {stem: (out / f"{stem}.summary.json").read_bytes() for stem in before} == before
    assert read_table(out) == table

    # A changed threshold redoes them, and says so.
    threshold = summary_of(out, "a")["threshold"]
    changed = run("--threshold=0.9", folder)
    assert changed.returncode == 1
    for stem in ("a", "b"):
        assert f"redoing {cohort[stem]}: threshold {threshold:.6g} -> 0.9" in changed.stdout
        assert summary_of(out, stem)["threshold"] == 0.9
        assert read_table(out)[stem]["threshold"] == "0.9"

    # The bad file replaced by a whole slide (a copy that had not finished): it maps, and leaves
    # the list of failures; the others are skipped.
    assert (out / "bad.failed.json").is_file()
    write_piece(demo_pixels, cohort["bad"], "b")
    fixed = run("--threshold=0.9", folder)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "1 mapped, 2 skipped, 0 failed" in fixed.stdout
    assert {row["status"] for row in read_table(out).values()} == {"mapped"}
    assert not (out / "bad.failed.json").exists()


def test_program_refuses_a_bad_shard_and_a_folder_without_slides(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    for flags, words in [
        (["--shard=2/2", str(DEMO_SLIDE)], "--shard=2/2"),
        ([str(tmp_path / "empty")], "no slide files in this folder"),
    ]:
        result = map_program(f"--output_dir={out}", *flags)
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and words in line


# ----------------------------------------------------------------------------- devices, QuPath


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_workdir(tiny_run, batch_size=256)[0]


def test_two_devices_split_each_batch_and_give_the_same_map(
    tmp_path, tiny_run, predictor, demo_pixels
):
    slide = write_piece(demo_pixels, tmp_path / "b.tiff", "b")
    one = slide_maps.map_slide(slide, tmp_path / "one", predictor, threshold=0.5)
    out = tmp_path / "two"
    result = subprocess.run(
        [
            sys.executable,
            "map_slide.py",
            "--noprogress",
            f"--workdir={tiny_run}",
            f"--output_dir={out}",
            "--threshold=0.5",
            "--notta",
            str(slide),
        ],
        cwd=REPO,
        env=subprocess_environment(device_count=2),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batches of 256 tiles, each split over 2 cpu devices" in result.stdout
    two = summary_of(out, "b")
    assert two["throughput"]["batch_size"] == 256 and two["tiles"] == one["tiles"]

    def p_idc(folder):
        with open(folder / "b.tiles.csv", newline="") as f:
            return np.array([float(r["p_idc"]) for r in csv.DictReader(f)])

    assert len(p_idc(out)) == one["tiles"]["predicted"] > 100
    # float32: each device runs its half of the batch on its own share of XLA's CPU threads,
    # which sums the convolutions in another order (up to 2e-5 measured; one device with a batch
    # of 128, the same half, agrees bit for bit). A mis-sharded batch (rows of one device given
    # to the other, or a half dropped) moves P(IDC) by tenths.
    np.testing.assert_allclose(p_idc(out), p_idc(tmp_path / "one"), atol=1e-4)


def test_geojson_tiles_are_qupath_tile_objects_with_their_p_idc(tmp_path, predictor, demo_pixels):
    slide = slide_files.open_slide(write_piece(demo_pixels, tmp_path / "a.tiff", "a"))
    out = tmp_path / "out"
    summary = slide_maps.map_slide(slide, out, predictor, threshold=0.3, geojson_tiles=True)
    assert summary["geojson_tiles"] is True
    features = json.loads((out / "a.geojson").read_text())["features"]
    annotations = [f for f in features if f["properties"]["objectType"] == "annotation"]
    tiles = [f for f in features if f["properties"]["objectType"] == "tile"]
    assert len(annotations) == summary["idc_regions"] > 0 and len(tiles) + len(annotations) == len(
        features
    )
    for annotation in annotations:  # the regions keep their class and colour
        assert annotation["properties"]["classification"] == {"name": "IDC", "color": [200, 0, 0]}
    with open(out / "a.tiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(tiles) == len(rows) == summary["tiles"]["predicted"]
    for tile, row in zip(tiles, rows):
        x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
        assert tile["geometry"]["coordinates"] == [
            [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        ]
        measurements = tile["properties"]["measurements"]
        assert measurements["P(IDC)"] == pytest.approx(float(row["p_idc"]), abs=1e-6)
        assert measurements["P(IDC) patch"] == pytest.approx(float(row["p_idc_patch"]), abs=1e-6)
        assert measurements["Tissue fraction"] == pytest.approx(float(row["tissue_fraction"]))
    # Without the flag the GeoJSON holds the regions alone.
    plain = slide_maps.map_slide(slide, tmp_path / "plain", predictor, threshold=0.3)
    assert plain["geojson_tiles"] is False
    plain_features = json.loads((tmp_path / "plain" / "a.geojson").read_text())["features"]
    assert plain_features == annotations
    assert sorted(slide_outputs.output_names(slide.path).values()) == sorted(
        p.name for p in out.iterdir()
    )
