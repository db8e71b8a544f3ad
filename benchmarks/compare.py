"""The results format shared by the benchmark scripts, and the table that sets them side by side.

Every benchmark (`bench_jax.py`, `bench_torch.py`) writes one JSON file:

    {"benchmark": "jax" | "torch" | "paper_experiment",
     "meta": {"date_utc", "device", "platform", "versions", "load_average", ...},
     "rows": [{"framework", "variant", "model", "image_size", "batch_size", "dtype",
               "train_images_per_s", "eval_images_per_s", "compile_s", "peak_memory_bytes", ...}],
     "skipped": "reason"}  # only when the benchmark could not run (e.g. torch missing)

A measurement that does not exist on a platform (peak device memory on a CPU, say) is `null` in the
JSON and "n/a" in the tables. This module merges such files into one markdown table with the ratio
of ours (the best JAX row of each model, size and batch) to the best PyTorch row of the same run:

    python benchmarks/compare.py benchmarks/results/*.json --out benchmarks/results/combined.md

Ratios are only printed between rows measured on the same device; files from several devices get
one table each.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import harness

if str(harness.REPO_ROOT) not in sys.path:  # run as a script: the project's packages
    sys.path.insert(0, str(harness.REPO_ROOT))

from experiment.markdown import markdown_table  # noqa: E402

# The row keys every framework fills (null where unmeasurable), in table order.
ROW_KEYS = (
    "framework",
    "variant",
    "model",
    "image_size",
    "batch_size",
    "dtype",
    "train_images_per_s",
    "train_step_ms",
    "eval_images_per_s",
    "compile_s",
    "peak_memory_bytes",
    "feed_images_per_s",
    "epoch_images",
    "epoch_s",
)

# ----------------------------------------------------------------------------- writing


def write_results(
    path: str | os.PathLike,
    benchmark: str,
    meta: Mapping,
    rows: Sequence,
    quiet: bool = False,
    **extra: Any,
) -> dict:
    """Writes one benchmark's JSON (and returns it); adds the closing load average to `meta`.

    `extra` adds top-level entries, e.g. the paper experiment's "summary".
    """
    meta = {**meta, "load_average_after": os.getloadavg()[0]}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": benchmark, "meta": meta, "rows": list(rows), **extra}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    if not quiet:
        print(f"wrote {path}")
    return payload


def add_row(
    path: str | os.PathLike, benchmark: str, meta: Mapping, rows: list, row: dict, line: str
) -> None:
    """Appends a measured row, prints its line and rewrites the JSON: a run stopped by its time
    limit keeps what it measured."""
    rows.append(row)
    print(line, flush=True)
    write_results(path, benchmark, meta, rows, quiet=True)


def finish(path: str | os.PathLike, benchmark: str, meta: Mapping, rows: Sequence) -> None:
    """Prints the table of all rows and writes the final JSON."""
    print()
    print(rows_table(rows))
    write_results(path, benchmark, meta, rows)


def write_skipped(path: str | os.PathLike, benchmark: str, reason: str) -> None:
    """A results file that says why a benchmark did not run (so the combined table can say it)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": benchmark, "meta": harness.host_meta(), "rows": [], "skipped": reason}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{benchmark}: skipped ({reason}); wrote {path}")


# ----------------------------------------------------------------------------- formatting


def fmt_number(value: Any, digits: int = 0) -> str:
    """Thousands separators; "n/a" for null (not measurable here)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def fmt_bytes(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def rows_table(rows: Sequence[Mapping]) -> str:
    """One benchmark's rows, as printed by the scripts (ratios are `combined_markdown`'s job)."""
    header = (
        "model",
        "px",
        "batch",
        "dtype",
        "framework",
        "variant",
        "train img/s",
        "ms/step",
        "eval img/s",
        "compile s",
        "peak memory",
        "feed img/s",
        "epoch s (images)",
    )
    return markdown_table(header, (_row_cells(row) for row in rows))


def _row_cells(row: Mapping) -> list[str]:
    epoch = "n/a"
    if row.get("epoch_s") is not None:
        epoch = f"{row['epoch_s']:.1f} ({row['epoch_images']:,})"
    return [
        row["model"],
        str(row["image_size"]),
        str(row["batch_size"]),
        row["dtype"],
        row["framework"],
        row["variant"],
        fmt_number(row.get("train_images_per_s")),
        fmt_number(row.get("train_step_ms"), 1),
        fmt_number(row.get("eval_images_per_s")),
        fmt_number(row.get("compile_s"), 1),
        fmt_bytes(row.get("peak_memory_bytes")),
        fmt_number(row.get("feed_images_per_s")),
        epoch,
    ]


# ----------------------------------------------------------------------------- merging


def load(paths: Iterable[str | os.PathLike]) -> list[dict]:
    results = []
    for path in paths:
        try:
            results.append(json.loads(pathlib.Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            print(f"compare: skipping {path}: {error}", file=sys.stderr)
    return results


def device_of(result: Mapping) -> str:
    meta = result.get("meta", {})
    return meta.get("device") or meta.get("cpu_model") or "unknown device"


def ratio_rows(rows: Sequence[Mapping]) -> list[list[str]]:
    """Per (model, size, batch): ours (best JAX) against the best PyTorch variant of the run."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["image_size"], row["batch_size"]), []).append(row)

    def best(candidates: list[Mapping], key: str) -> Mapping | None:
        measured = [r for r in candidates if r.get(key) is not None]
        return max(measured, key=lambda r: r[key]) if measured else None

    lines = []
    for (model, size, batch), group in sorted(groups.items()):
        ours = [r for r in group if r["framework"] == "jax"]
        peers = [r for r in group if r["framework"] == "torch"]
        cells = [model, str(size), str(batch)]
        for key in ("train_images_per_s", "eval_images_per_s"):
            jax_best, torch_best = best(ours, key), best(peers, key)
            cells += [
                _labelled(jax_best, key),
                _labelled(torch_best, key),
                _ratio(jax_best, torch_best, key),
            ]
        lines.append(cells)
    return lines


def _labelled(row: Mapping | None, key: str) -> str:
    if row is None:
        return "n/a"
    return f"{row[key]:,.0f} ({row['variant']})"


def _ratio(ours: Mapping | None, peer: Mapping | None, key: str) -> str:
    if ours is None or peer is None:
        return "n/a"
    return f"{ours[key] / peer[key]:.2f}x"


def paper_lines(results: Sequence[Mapping]) -> list[str]:
    out = []
    for result in results:
        if result.get("benchmark") != "paper_experiment":
            continue
        for row in result["rows"]:
            out.append(
                f"- {row['model']}: {row['epochs']} epochs x {row['images_per_epoch']:,} images "
                f"at {row['image_size']} px, batch {row['batch_size']}, {row['dtype']}: "
                f"{row['train_s']:.1f} s training + {row['compile_s']:.1f} s compile "
                f"({row['train_images_per_s']:,.0f} images/s; feeding alone "
                f"{row['feed_images_per_s']:,.0f} images/s, host time in feeding "
                f"{100 * row['feed_fraction']:.0f}% of the wall time)"
            )
        summary = result.get("summary", {})
        if summary:
            goal = {True: "met", False: "NOT met", None: "not judged (not the full-size run)"}[
                summary["goal_met"]
            ]
            out.append(
                f"- whole experiment: {summary['train_s']:.1f} s training, "
                f"{summary['wall_s']:.1f} s with compilation: goal (< 60 s training) {goal}."
            )
        for note in result.get("meta", {}).get("notes", []):
            out.append(f"- note: {note}")
    return out


def combined_markdown(results: Sequence[Mapping]) -> str:
    """All results as markdown: per device, a ratio table, then every row, then the notes."""
    sections = []
    by_device: dict[str, list[Mapping]] = {}
    for result in results:
        by_device.setdefault(device_of(result), []).append(result)
    for device, device_results in by_device.items():
        rows = [
            row
            for r in device_results
            if r.get("benchmark") != "paper_experiment"
            for row in r.get("rows", [])
        ]
        metas = [r["meta"] for r in device_results]
        versions: dict[str, str] = {}
        for meta in metas:
            versions.update(meta.get("versions", {}))
        dates = sorted(m.get("date_utc", "") for m in metas)
        sections.append(f"## {device}")
        sections.append(
            f"Measured {dates[0]} to {dates[-1]} UTC; "
            + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v)
            + "."
        )
        loads = [(m.get("load_average_before"), m.get("load_average_after")) for m in metas]
        sections.append(
            "1-minute load average before/after each benchmark: "
            + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in loads if a is not None and b is not None)
        )
        for result in device_results:
            if result.get("skipped"):
                sections.append(f"- {result['benchmark']} skipped: {result['skipped']}")
        if rows:
            sections.append(
                "### Ours against the best PyTorch variant (images/s, higher is better)\n\n"
                + markdown_table(
                    (
                        "model",
                        "px",
                        "batch",
                        "train: JAX",
                        "train: best PyTorch",
                        "train ratio",
                        "eval: JAX",
                        "eval: best PyTorch",
                        "eval ratio",
                    ),
                    ratio_rows(rows),
                )
            )
            sections.append("### Every measurement\n\n" + rows_table(rows))
        paper = paper_lines(device_results)
        if paper:
            sections.append("### The paper's experiment\n\n" + "\n".join(paper))
    return "\n\n".join(sections) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("results", nargs="+", help="JSON files written by the benchmarks")
    parser.add_argument("--out", help="markdown file to write (else printed only)")
    parser.add_argument("--json_out", help="also write every result, as one JSON list, here")
    args = parser.parse_args(argv)
    results = load(args.results)
    markdown = combined_markdown(results)
    print(markdown)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(markdown)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
