"""Cohorts of slides for map_slide.py: finding them, sharding them over processes and hosts, and
knowing which are already mapped with the same model and settings.

    slides = find_slides(["slides/", "more/*.svs", "one.ndpi"])   # sorted, unique; CohortError
    mine = shard(slides, *parse_shard("3/16"))                     # --shard=i/N
    current = settings(model=model.describe(), threshold=..., context_stage=..., min_tissue=...,
                       slide=slide.describe(), geojson_tiles=False)
    summary = finished_map(output_dir, slide.path)                 # complete outputs, or None
    changed = changes(settings_of_summary(summary), current)       # [] : skip the slide

Finding: a folder is searched (recursively, hidden entries left out) for files with a slide
suffix (`SLIDE_SUFFIXES`); a glob is expanded (its folders searched in turn); a file named on
the command line is taken whatever its suffix (OpenSlide judges it). DICOM series are one file
per level, so a folder search leaves .dcm out: name one file of each series. Two slides whose
outputs would share a name (`a/1.svs`, `b/1.svs`: `1.*`) are refused together.

Sharding: slides ordered by output stem (the name of their outputs, the same on every host
whatever the mount point), slide k to shard k mod N: deterministic, balanced to one slide, no
scheduler or coordination needed, so a SLURM job array (`--shard=$SLURM_ARRAY_TASK_ID/
$SLURM_ARRAY_TASK_COUNT`) or any batch system runs it. The N shards partition the cohort exactly
when they list the same slides; a slide added meanwhile is mapped by the next run, since a run
skips what is finished.

Finished: `slide_outputs.write_outputs` renames the summary into place last, so a summary whose
listed outputs are all present is a complete map. It is the same map when `settings` agree:
the model (which weights, checkpoint and step; not the code version), threshold, TTA, slide
context stage, minimum tissue share, GeoJSON tiles, and the slide (file name, dimensions,
scale, given or read). Otherwise the slide is redone and `changes` says why, one item each.
"""

from __future__ import annotations

import glob
import json
import pathlib
import time

from idc_inference import slide_outputs

# Every single-file format OpenSlide reads (and MIRAX's index file); DICOM is left out (above).
SLIDE_SUFFIXES = frozenset(
    (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".svslide", ".bif", ".czi")
)
# What identifies the model in a summary's record (`IDCModel.describe`): the code version is
# left out on purpose, so that an update of this program does not redo a finished cohort.
MODEL_KEYS = ("source", "name", "model", "alpha", "image_size", "checkpoint", "step", "trained_on")
_GLOB_CHARACTERS = frozenset("*?[")


class CohortError(Exception):
    """A cohort that cannot be mapped as given (no slides, clashing names, a bad --shard)."""


# ----------------------------------------------------------------------------- finding


def _hidden(path: pathlib.Path, root: pathlib.Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def search_folder(folder: pathlib.Path) -> list[pathlib.Path]:
    """The slide files under `folder` (recursively), by suffix, hidden entries left out."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in SLIDE_SUFFIXES and path.is_file() and not _hidden(path, folder)
    )


def _expand(argument: str) -> list[pathlib.Path]:
    path = pathlib.Path(argument)
    if path.is_dir():
        found = search_folder(path)
        if not found:
            suffixes = ", ".join(sorted(SLIDE_SUFFIXES))
            raise CohortError(f"{path}: no slide files in this folder (searched for {suffixes})")
        return found
    if path.exists():
        return [path]
    if _GLOB_CHARACTERS & set(argument):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise CohortError(f"{argument}: the pattern matches no file")
        return [p for match in matches for p in _expand_match(pathlib.Path(match))]
    raise CohortError(f"{path}: no such file or folder")


def _expand_match(path: pathlib.Path) -> list[pathlib.Path]:
    """A glob's match: a folder is searched, a file taken only with a slide suffix (so that
    `slides/*` does not try a README)."""
    if path.is_dir():
        return search_folder(path)
    return [path] if path.suffix.lower() in SLIDE_SUFFIXES else []


def find_slides(arguments: list[str]) -> list[pathlib.Path]:
    """Every slide the arguments name (files, folders, globs), once each, in path order."""
    seen: dict[pathlib.Path, pathlib.Path] = {}
    for argument in arguments:
        for path in _expand(str(argument)):
            seen.setdefault(path.resolve(), path)
    slides = sorted(seen.values(), key=str)
    if not slides:
        raise CohortError(f"no slide files in {' '.join(map(str, arguments))}")
    by_stem: dict[str, pathlib.Path] = {}
    for path in slides:
        other = by_stem.setdefault(path.stem, path)
        if other is not path:
            raise CohortError(
                f"{other} and {path} would both write {path.stem}.* in the output folder; "
                "map them into different --output_dir folders (or rename one)"
            )
    return slides


# ----------------------------------------------------------------------------- sharding


def parse_shard(text: str) -> tuple[int, int]:
    """(i, N) of "--shard=i/N", 0 <= i < N; CohortError otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise CohortError(
            f"--shard={text}: expected i/N with 0 <= i < N, e.g. "
            "--shard=${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT} in a job array "
            "--array=0-<N-1>"
        )
    return index, count


def shard(slides: list[pathlib.Path], index: int, count: int) -> list[pathlib.Path]:
    """Shard `index` of `count`: every count-th slide in the order of their output stems."""
    # By stem (unique in a cohort: `find_slides`), then path, so that any listing order agrees.
    ordered = sorted(slides, key=lambda path: (path.stem, str(path)))
    return ordered[index::count]


# ----------------------------------------------------------------------------- finished maps


def _plain(value):
    """`value` as JSON gives it back (tuples as lists, NumPy scalars as numbers), so that a
    setting of this run compares equal to the same setting read from a summary."""
    return json.loads(json.dumps(slide_outputs.json_ready(value)))


def settings(
    *,
    model: dict,
    threshold: float,
    context_stage: dict | None,
    min_tissue: float,
    slide: dict,
    geojson_tiles: bool,
) -> dict:
    """What makes two maps of a slide the same map (module docstring), from the records a
    summary holds: `model` as `IDCModel.describe()`, `slide` as `Slide.describe()`."""
    identity = {key: model.get(key) for key in MODEL_KEYS}
    if model.get("source") != "shipped":  # the shipped model's folder moves with the install
        identity["path"] = model.get("path")
    return _plain(
        {
            "model": identity,
            "threshold": threshold,
            "tta": model.get("tta"),
            "context_stage": context_stage,
            "min_tissue": min_tissue,
            "geojson_tiles": bool(geojson_tiles),
            "slide": {
                "file": pathlib.Path(slide["path"]).name,
                "dimensions": slide["dimensions"],
                "mpp": [slide["mpp_x"], slide["mpp_y"]],
            },
        }
    )


def settings_of_summary(summary: dict) -> dict:
    """The `settings` a summary.json records (KeyError when it is not a summary)."""
    return settings(
        model=summary.get("model") or {},
        threshold=summary["threshold"],
        context_stage=summary.get("context_stage"),
        min_tissue=summary["tiles"]["min_tissue_fraction"],
        slide=summary["slide"],
        geojson_tiles=summary.get("geojson_tiles", False),
    )


def _shown(value) -> str:
    if isinstance(value, dict):
        return "another" if value else "none"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "none" if value is None else str(value)


def changes(before: dict, now: dict) -> list[str]:
    """What differs between two `settings`, one item each ("threshold 0.346 -> 0.5")."""
    found = []
    for key, value in now.items():
        old = before.get(key)
        if old == value:
            continue
        if key in ("model", "slide") and isinstance(old, dict):
            found += [
                f"{key} {part} {_shown(old.get(part))} -> {_shown(value[part])}"
                for part in value
                if old.get(part) != value[part]
            ]
        else:
            found.append(f"{key.replace('_', ' ')} {_shown(old)} -> {_shown(value)}")
    return found


def finished_map(output_dir: pathlib.Path, slide_path: pathlib.Path) -> dict | None:
    """The summary of a complete earlier map of this slide in `output_dir`, else None."""
    names = slide_outputs.output_names(slide_path)
    try:
        summary = json.loads((output_dir / names["summary"]).read_text())
    except (OSError, ValueError):
        return None
    listed = summary.get("outputs") if isinstance(summary, dict) else None
    if not isinstance(listed, dict) or not all((output_dir / n).is_file() for n in listed.values()):
        return None
    return summary


# ----------------------------------------------------------------------------- progress


def plural(count: int, noun: str) -> str:
    """'1 slide', '3 slides'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def duration(seconds: float) -> str:
    """'1 h 05 min', '4 min 10 s', '35 s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class Progress:
    """The line before each slide: slide i of n, what happened so far, and the time left.

    The estimate is the mean time of the slides mapped so far times the slides left (skipped
    slides take no time, so they do not count).
    """

    def __init__(self, total: int):
        self.total = total
        self.counts = {"mapped": 0, "skipped": 0, "failed": 0}
        self.mapping_seconds = 0.0
        self.started = time.perf_counter()

    def line(self, number: int, path: pathlib.Path) -> str:
        done = ", ".join(f"{count} {status}" for status, count in self.counts.items())
        attempted = self.counts["mapped"] + self.counts["failed"]
        left = self.total - number + 1
        eta = "after the first map"
        if attempted:
            eta = duration(self.mapping_seconds / attempted * left)
        return f"slide {number} of {self.total}: {path} ({done}; ETA {eta})"

    def record(self, status: str, seconds: float) -> None:
        self.counts[status] += 1
        if status != "skipped":
            self.mapping_seconds += seconds

    def elapsed(self) -> str:
        return duration(time.perf_counter() - self.started)
