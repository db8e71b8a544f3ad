"""Shared test fixtures.

Tests run on the CPU. XLA compiles of depthwise convolutions are slow there, so the suite keeps a
persistent compilation cache in the repository (reused by the subprocesses that run `main.py`),
uses small widths and images, and compiles without LLVM's optimisation passes: the suite compiles
hundreds of small programs and runs each a few times, so those passes cost more than they save.
No test depends on them: every tolerance holds for any order of float operations.
"""

import os
import pathlib
import shutil

import jax
import pytest

from tests.commands import TEST_XLA_FLAGS

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
IDC_SAMPLE = SHARED_DATA / "idc_sample" / "8863"
SPLITS_DIR = SHARED_DATA / "splits"
JAX_CACHE = REPO_ROOT / ".jax_cache"

# Before JAX creates its CPU backend; child processes inherit it (tests/commands.py). First,
# because XLA stops reading XLA_FLAGS at an entry without dashes.
os.environ["XLA_FLAGS"] = " ".join([*TEST_XLA_FLAGS, os.environ.get("XLA_FLAGS", "")]).strip()

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(JAX_CACHE))
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


EMBEDDED_SAMPLE = REPO_ROOT / "data" / "idc_sample"
# The tiny real data set of the end-to-end tests: from each of the first TINY_PATIENTS patients of
# the shipped sample that have enough of both classes, TINY_PER_CLASS patches of each class.
TINY_PATIENTS = 20
TINY_PER_CLASS = 5


def tiny_data_dir(tmp_path_factory) -> pathlib.Path:
    """A TFDS data_dir whose manual directory holds 200 real patches of 20 patients.

    Made once per session in its base temp directory (any test module may ask first).
    """
    data_dir = tmp_path_factory.getbasetemp() / "tiny_tfds"
    manual = data_dir / "downloads" / "manual"
    if manual.is_dir():
        return data_dir
    staging = data_dir / "downloads" / "staging"
    taken = 0
    for patient in sorted(EMBEDDED_SAMPLE.iterdir(), key=lambda p: int(p.name)):
        classes = [sorted((patient / c).glob("*.png")) for c in ("0", "1")]
        if min(len(files) for files in classes) < TINY_PER_CLASS:
            continue
        for c, files in zip(("0", "1"), classes):
            (staging / patient.name / c).mkdir(parents=True)
            for file in files[:TINY_PER_CLASS]:
                shutil.copy2(file, staging / patient.name / c / file.name)
        taken += 1
        if taken == TINY_PATIENTS:
            break
    staging.rename(manual)
    return data_dir


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """The session's TFDS data_dir, with the tiny real set as its manual download."""
    return tiny_data_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def idc_sample_dir() -> pathlib.Path:
    """The 979 real patches of patient 8863; skips when ../shared is absent."""
    if not IDC_SAMPLE.is_dir():
        pytest.skip(f"real IDC sample not found at {IDC_SAMPLE} (needs ../shared next to the repo)")
    return IDC_SAMPLE


@pytest.fixture(scope="session")
def published_splits_dir() -> pathlib.Path:
    if not SPLITS_DIR.is_dir():
        pytest.skip(f"published split lists not found at {SPLITS_DIR}")
    return SPLITS_DIR
