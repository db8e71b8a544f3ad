"""The table of the slides in an output folder (`slides.csv`), and the records of slides that
failed (map_slide.py).

    record_failure(output_dir, slide_path, reason)   # <stem>.failed.json: why, and when
    clear_failure(output_dir, slide_path)            # the slide has been mapped since
    path = write_table(output_dir)                   # <output_dir>/slides.csv

The table is derived, never appended to: one row per slide, from the slide's own
`<stem>.summary.json` (status "mapped": its areas, regions, P(IDC), model, threshold, seconds) or
`<stem>.failed.json` (status "failed", with the one-line reason; a failure record is newer than
any summary beside it, since a successful map removes it). The whole table is rewritten from every
record in the folder, under a temporary name renamed into place, while holding an exclusive lock
on `.slides.csv.lock`. Shards on several hosts writing into one folder therefore never corrupt it
or each other's rows: the last shard to finish writes a table holding every slide finished before
it took the lock, and any later run (the same command without --shard, which skips every finished
slide) writes it whole again. Where the file system offers no locks (some cluster file systems),
the rename alone still keeps the table whole.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import pathlib
import socket

from idc_inference.slide_outputs import write_json

TABLE_NAME = "slides.csv"
FAILURE_SUFFIX = ".failed.json"
SUMMARY_SUFFIX = ".summary.json"
COLUMNS = (
    "file",
    "status",
    "reason",
    "tissue_mm2",
    "idc_mm2",
    "idc_fraction",
    "regions",
    "largest_region_mm2",
    "mean_p_idc",
    "max_p_idc",
    "model",
    "threshold",
    "seconds",
)


def failure_path(output_dir: pathlib.Path, slide_path: pathlib.Path) -> pathlib.Path:
    return output_dir / f"{pathlib.Path(slide_path).stem}{FAILURE_SUFFIX}"


def record_failure(
    output_dir: pathlib.Path, slide_path: pathlib.Path, reason: str, detail: str | None = None
) -> None:
    """Writes `<stem>.failed.json`: the slide, the one-line reason, and `detail` (a traceback)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "slide": str(slide_path),
        "status": "failed",
        "reason": reason,
        "detail": detail,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_json(failure_path(output_dir, slide_path), record)


def clear_failure(output_dir: pathlib.Path, slide_path: pathlib.Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        failure_path(output_dir, slide_path).unlink()


def _cell(value) -> str:
    """A figure to 6 significant digits (an integer or a name as it is), blank when absent."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def row_of_summary(summary: dict) -> dict:
    """The table's row of a map (KeyError when `summary` is not a map's summary)."""
    return {
        "file": summary["slide"]["path"],
        "status": "mapped",
        "reason": "",
        "tissue_mm2": _cell(summary["tissue_area_mm2"]),
        "idc_mm2": _cell(summary["idc_tissue_area_mm2"]),
        "idc_fraction": _cell(summary["idc_fraction_of_tissue"]),
        "regions": _cell(summary["idc_regions"]),
        # Summaries written before slides.csv existed lack these three.
        "largest_region_mm2": _cell(summary.get("largest_idc_region_mm2")),
        "mean_p_idc": _cell(summary.get("p_idc_mean")),
        "max_p_idc": _cell(summary.get("p_idc_max")),
        "model": _cell((summary.get("model") or {}).get("name")),
        "threshold": _cell(summary["threshold"]),
        "seconds": _cell(summary.get("seconds_total")),
    }


def row_of_failure(record: dict) -> dict:
    return {column: "" for column in COLUMNS} | {
        "file": record["slide"],
        "status": "failed",
        "reason": record["reason"],
    }


def _records(output_dir: pathlib.Path, suffix: str) -> dict[str, dict]:
    """stem -> the JSON of each `<stem><suffix>` in the folder (unreadable ones left out: a
    file being replaced, or not this program's)."""
    found = {}
    for path in sorted(output_dir.glob(f"*{suffix}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            found[path.name[: -len(suffix)]] = record
    return found


def table_rows(output_dir: pathlib.Path) -> list[dict]:
    """One row per slide with a summary or a failure record in `output_dir`, by file."""
    rows = {}
    for stem, summary in _records(output_dir, SUMMARY_SUFFIX).items():
        with contextlib.suppress(KeyError, TypeError):
            rows[stem] = row_of_summary(summary)
    for stem, record in _records(output_dir, FAILURE_SUFFIX).items():
        with contextlib.suppress(KeyError, TypeError):
            rows[stem] = row_of_failure(record)  # the latest attempt (a map removes it)
    return sorted(rows.values(), key=lambda row: row["file"])


@contextlib.contextmanager
def _exclusive(output_dir: pathlib.Path):
    """An exclusive lock on the folder's lock file, where the file system has locks."""
    with open(output_dir / f".{TABLE_NAME}.lock", "a") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass  # no locks here: the atomic rename still keeps the table whole
        yield


def write_table(output_dir: pathlib.Path) -> pathlib.Path:
    """Rewrites `<output_dir>/slides.csv` from every record in the folder (module docstring)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / TABLE_NAME
    temporary = output_dir / f".{TABLE_NAME}.partial-{socket.gethostname()}-{os.getpid()}"
    with _exclusive(output_dir):
        rows = table_rows(output_dir)
        try:
            with temporary.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(temporary, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    return final
