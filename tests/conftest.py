"""Shared test fixtures.

Tests run on the CPU. XLA compiles of depthwise convolutions are slow there, so
the suite keeps a persistent compilation cache in the repository (reused by the
subprocesses that run `main.py`) and uses small widths and images.
"""

import os
import pathlib

import jax
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
IDC_SAMPLE = SHARED_DATA / "idc_sample" / "8863"
SPLITS_DIR = SHARED_DATA / "splits"
JAX_CACHE = REPO_ROOT / ".jax_cache"

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(JAX_CACHE))
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """A TFDS data_dir shared by the session: each data set is built into it once."""
    return tmp_path_factory.mktemp("tfds")


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
