"""The full-size data set: build time, peak memory and cached reload on a stand-in of the Kaggle
download, made from whatever real patches it is given.

    python benchmarks/full_size_data.py --real ../shared/data/idc_subset/IDC_regular_ps50_idx5.zip
    python benchmarks/full_size_data.py --real /data/idc_245 --target_patches 140000  # half size

The Kaggle download (277,524 patches of 279 patients, 1.6 GB zip, every patient folder twice)
needs a login, so the benchmark writes a stand-in of its size: each distinct real patch it is
given, written `copies` times under new patient ids (copy k of patient p is patient
p + k * 100000, the same pixels and grid positions), to about `--target_patches` patches, into a
deflated zip laid out as the download is, with a nested second copy
(`IDC_regular_ps50_idx5/<patient>/...`) of a quarter of the patient folders. Then, each in a
fresh process:

1. build: `input_pipeline.load_dataset` on an empty data_dir, as a first training run does: the
   TFDS build (scan the zip, decode and check every PNG, write array_record), the first load
   (decode every stored PNG into one uint8 array, write the .npy cache) and the patient split;
2. reload: the same again, as every later run does (the .npy cache, memory-mapped).

Each reports its wall time per phase and its peak resident memory (`ru_maxrss`), sampled RSS
per phase (a thread reading /proc/self/statm every 0.2 s), and checks the counts: every patch
once, the nested copies ignored. The decoded data are N x 50 x 50 x 3 bytes; the peak beyond
that is the pipeline's own. Results go to benchmarks/results/full_size_data.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import zipfile

BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]

import harness  # noqa: E402

from input_pipeline.patches import FILE_NAME_PATTERN  # noqa: E402

PATIENT_STRIDE = 100_000  # copy k of patient p is patient p + k * PATIENT_STRIDE
NESTED = "IDC_regular_ps50_idx5"
PATCH_BYTES = 50 * 50 * 3


def real_patches(paths: list[pathlib.Path]) -> dict[str, bytes]:
    """{file name: PNG bytes} of every Kaggle-named patch in the folders and zips given."""
    found: dict[str, bytes] = {}
    for path in paths:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    name = member.rsplit("/", 1)[-1]
                    if FILE_NAME_PATTERN.match(name):
                        found.setdefault(name, archive.read(member))
        else:
            for file in path.rglob("*.png"):
                if FILE_NAME_PATTERN.match(file.name):
                    found.setdefault(file.name, file.read_bytes())
    return found


def write_stand_in(
    patches: dict[str, bytes], zip_path: pathlib.Path, copies: int, nested_fraction: float
) -> dict:
    """The stand-in zip; returns what it holds."""
    by_patient: dict[int, list[str]] = {}
    for name in sorted(patches):
        by_patient.setdefault(int(FILE_NAME_PATTERN.match(name).group(1)), []).append(name)
    patients = [p + k * PATIENT_STRIDE for k in range(copies) for p in sorted(by_patient)]
    nested_every = round(1 / nested_fraction) if nested_fraction > 0 else 0
    nested_patients = set(patients[::nested_every]) if nested_every else set()
    written = nested = 0
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for patient in patients:
            original = patient % PATIENT_STRIDE
            for name in by_patient[original]:
                match = FILE_NAME_PATTERN.match(name)
                _, x, y, label = match.groups()
                new_name = f"{patient}_idx5_x{x}_y{y}_class{label}.png"
                member = f"{patient}/{label}/{new_name}"
                archive.writestr(member, patches[name])
                written += 1
                if patient in nested_patients:
                    archive.writestr(f"{NESTED}/{member}", patches[name])
                    nested += 1
    return {
        "distinct_real_patches": len(patches),
        "real_patients": len(by_patient),
        "copies": copies,
        "patches": written,
        "patients": len(patients),
        "nested_copies": nested,
        "nested_patients": len(nested_patients),
        "zip_bytes": zip_path.stat().st_size,
    }


# ----------------------------------------------------------------------------- one phase


class RssSampler:
    """Resident memory every `interval` seconds, with the phase it was taken in: the peak of the
    total, and the peaks of its anonymous part (the process's own memory) and its file-backed
    part (pages of memory-mapped files: page cache the kernel can drop)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.phase = interval, "start"
        self.peaks: dict[str, int] = {}
        self.anon_peaks: dict[str, int] = {}
        self.file_peaks: dict[str, int] = {}
        self.anon_at_end: dict[str, int] = {}  # the anonymous part as each phase ended
        self.child_peaks: dict[str, int] = {}  # the largest child process's RSS (the build's)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _status() -> dict[str, int]:
        values = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")):
                    key, amount, _unit = line.split()
                    values[key.rstrip(":")] = int(amount) * 1024
        return values

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @staticmethod
    def _children_rss() -> int:
        import psutil

        rss = 0
        for child in psutil.Process().children(recursive=True):
            try:
                rss = max(rss, child.memory_info().rss)
            except psutil.Error:
                pass
        return rss

    def sample(self) -> None:
        status = self._status()
        self.child_peaks[self.phase] = max(
            self.child_peaks.get(self.phase, 0), self._children_rss()
        )
        for peaks, key in (
            (self.peaks, "VmRSS"),
            (self.anon_peaks, "RssAnon"),
            (self.file_peaks, "RssFile"),
        ):
            peaks[self.phase] = max(peaks.get(self.phase, 0), status.get(key, 0))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.sample()
        self.anon_at_end[self.phase] = self._status().get("RssAnon", 0)
        self._stop.set()
        self._thread.join()

    def enter(self, phase: str) -> None:
        self.sample()
        self.anon_at_end[self.phase] = self._status().get("RssAnon", 0)
        self.phase = phase


def run_phase(zip_dir: pathlib.Path, data_dir: pathlib.Path, cpu_training: bool) -> dict:
    """load_dataset (build, decode, split, or the cached reload) in this process; timings,
    sampled peak RSS per phase, ru_maxrss, counts. `cpu_training`: with the glibc settings a
    CPU training run makes before it loads its data (mobilenets/cpu/host_memory.py)."""
    import resource

    from configs import default
    from input_pipeline import dataset

    if cpu_training:
        from mobilenets.cpu import host_memory

        host_memory.keep_scratch_memory_mapped()

    config = default.data_config(
        dataset="kaggle_idc", data_dir=str(data_dir), manual_dir=str(zip_dir)
    )
    times = {}
    with RssSampler() as rss:
        rss.enter("prepare (TFDS build, or nothing)")
        choice, times["prepare"] = harness.timed(lambda: dataset.prepare(config))
        rss.enter("load table (decode + cache, or the cache)")
        table, times["load_table"] = harness.timed(lambda: dataset.load_table(choice.builder))
        rows = len(table["label"])
        del table
        rss.enter("load_dataset (split)")
        data, times["load_dataset"] = harness.timed(lambda: dataset.load_dataset(config))
    return {
        "seconds": times,
        "peak_rss_by_phase": rss.peaks,
        "peak_anonymous_rss_by_phase": rss.anon_peaks,
        "peak_file_rss_by_phase": rss.file_peaks,
        "anonymous_rss_at_end_of_phase": rss.anon_at_end,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        # The TFDS build of a large source runs in a child process (dataset.prepare): its RSS,
        # sampled (RUSAGE_CHILDREN would report at least this process's RSS when it forked).
        "child_peak_rss_bytes": max(rss.child_peaks.values(), default=0),
        "load_average_after": os.getloadavg()[0],
        "rows": rows,
        "build_report": data.info.build_report,
        "counts": data.info.counts,
    }


def in_child(zip_dir: pathlib.Path, data_dir: pathlib.Path, cpu_training: bool) -> dict:
    command = [sys.executable, __file__, "--phase", str(zip_dir), str(data_dir)]
    command += ["--cpu_training"] if cpu_training else []
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", nargs="+", type=pathlib.Path, help="real patches: folders, zips")
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/full_size_data"))
    parser.add_argument("--target_patches", type=int, default=280_000)
    parser.add_argument("--nested_fraction", type=float, default=0.25)
    parser.add_argument("--keep", action="store_true", help="keep the stand-in and the data_dir")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a stand-in kept in --workdir by --keep"
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["build", "reload"],
        choices=["build", "reload"],
        help="reload alone measures the cached load of a data_dir kept by --keep",
    )
    parser.add_argument(
        "--cpu_training",
        action="store_true",
        help="with the glibc settings main.py makes on a CPU before it loads its data",
    )
    parser.add_argument("--phase", nargs=2, type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(*args.phase, args.cpu_training)))
        return
    meta = harness.host_meta()
    zip_dir, data_dir = args.workdir / "manual", args.workdir / "tfds"
    zip_path, stand_in_file = zip_dir / "archive.zip", args.workdir / "stand_in.json"
    if args.reuse and stand_in_file.is_file():
        stand_in = json.loads(stand_in_file.read_text())
    else:
        if not args.real:
            parser.error("--real: give folders or zips of real Kaggle-named patches")
        shutil.rmtree(args.workdir, ignore_errors=True)
        patches = real_patches(args.real)
        copies = max(1, round(args.target_patches / len(patches)))
        stand_in, seconds = harness.timed(
            lambda: write_stand_in(patches, zip_path, copies, args.nested_fraction)
        )
        patches.clear()
        stand_in["write_seconds"] = seconds
        stand_in_file.write_text(json.dumps(stand_in))
    copies = stand_in["copies"]
    print(f"stand-in: {json.dumps(stand_in)}", flush=True)

    runs = {}
    if "build" in args.runs:
        shutil.rmtree(data_dir, ignore_errors=True)
        runs["build"] = in_child(zip_dir, data_dir, args.cpu_training)
    if "reload" in args.runs:
        runs["reload"] = in_child(zip_dir, data_dir, args.cpu_training)
    for run in runs.values():
        report = run["build_report"]
        assert report["examples_written"] == stand_in["patches"], report
        assert report.get("duplicate_copies_ignored", 0) == stand_in["nested_copies"], report
        assert run["rows"] == stand_in["patches"]
    empty = {"seconds": {}, "peak_rss_by_phase": {}, "ru_maxrss_bytes": 0}  # a run not made
    build, reload = runs.get("build", empty), runs.get("reload", empty)
    decoded = stand_in["patches"] * PATCH_BYTES
    result = {
        "meta": meta,
        "cpu_training_settings": args.cpu_training,
        "stand_in": stand_in,
        **runs,
        "decoded_bytes": decoded,
    }
    harness.RESULTS_DIR.mkdir(exist_ok=True)
    out = harness.RESULTS_DIR / "full_size_data.json"
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\n{stand_in['patches']:,} patches of {stand_in['patients']:,} patients "
        f"({stand_in['distinct_real_patches']:,} distinct real ones x {copies}), "
        f"{stand_in['nested_copies']:,} nested copies; zip {gb(stand_in['zip_bytes'])}; "
        f"decoded {gb(decoded)}\n"
    )
    print("| phase | first run (build) | later run (cached) |\n|---|---|---|")
    for key in ("prepare", "load_table", "load_dataset"):
        cells = [
            f"{run['seconds'][key]:.1f} s" if key in run["seconds"] else "-"
            for run in (build, reload)
        ]
        print(f"| {key} | {' | '.join(cells)} |")
    print(
        f"| peak RSS (ru_maxrss) | {gb(build['ru_maxrss_bytes'])} | "
        f"{gb(reload['ru_maxrss_bytes'])} |"
    )
    children = [gb(run.get("child_peak_rss_bytes", 0)) for run in (build, reload)]
    print(f"| sampled peak RSS of the build's child process | {' | '.join(children)} |")
    phases = dict.fromkeys([*build["peak_rss_by_phase"], *reload["peak_rss_by_phase"]])
    for phase in phases:
        cells = [
            f"{gb(run['peak_rss_by_phase'].get(phase, 0))} "
            f"(anonymous {gb(run.get('peak_anonymous_rss_by_phase', {}).get(phase, 0))}, "
            f"mapped files {gb(run.get('peak_file_rss_by_phase', {}).get(phase, 0))}; "
            f"anonymous at its end "
            f"{gb(run.get('anonymous_rss_at_end_of_phase', {}).get(phase, 0))})"
            for run in (build, reload)
        ]
        print(f"| sampled peak RSS, {phase} | {' | '.join(cells)} |")
    print(f"\nwrote {out}")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
