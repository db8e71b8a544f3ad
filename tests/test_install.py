"""`pip install .`: what it installs, and the three-line API from a fresh venv elsewhere.

The heavy test installs the repository into a new venv (jax and the rest from PyPI, or pip's
cache after the project's own installation), then, from a directory outside the clone, runs
`idc_inference.load()` / `predict` on the real patches of a patient the shipped model never
trained on, and compares with `predict.py`'s CSV for the same model.
"""

import csv
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from tests.commands import run_program, subprocess_environment
from tests.test_model_api import unseen_patient

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
INSTALLED = ["mobilenets", "input_pipeline", "evaluation", "trainer", "idc_inference"]
NOT_INSTALLED = ["configs", "data", "experiment", "tests", "benchmarks"]
OPTIONAL = {"tensorflow-cpu", "tensorboard"}  # extra "tensorboard"
UNIT_ROUNDOFF32 = 2.0**-24


def pins(lines) -> dict[str, str]:
    result = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            result[name.lower().replace("_", "-")] = version
    return result


def test_dependencies_are_the_pinned_requirements_less_tensorboard():
    requirements = pins((REPO / "requirements.txt").read_text().splitlines())
    dependencies = pins(PYPROJECT["project"]["dependencies"])
    extras = pins(PYPROJECT["project"]["optional-dependencies"]["tensorboard"])
    assert dependencies == {k: v for k, v in requirements.items() if k not in OPTIONAL}
    assert extras == {k: v for k, v in requirements.items() if k in OPTIONAL}
    tests_only = pins((REPO / "requirements-test.txt").read_text().splitlines())
    assert not set(tests_only) & set(requirements)


def test_the_libraries_and_their_data_are_installed_not_the_repository():
    setuptools = PYPROJECT["tool"]["setuptools"]
    top_level = {name.split(".")[0] for name in setuptools["packages"]}
    assert top_level == set(INSTALLED)
    for package in setuptools["packages"]:  # every subpackage listed
        assert (REPO / package.replace(".", "/") / "__init__.py").is_file()
    subpackages = {
        str(p.parent.relative_to(REPO)).replace("/", ".")
        for name in INSTALLED
        for p in (REPO / name).rglob("__init__.py")
    }
    assert subpackages == set(setuptools["packages"])
    data = setuptools["package-data"]
    assert (REPO / "mobilenets/cpu/kernels.cc").is_file() and data["mobilenets.cpu"] == [
        "kernels.cc"
    ]
    for pattern in data["idc_inference"]:
        assert list((REPO / "idc_inference").glob(pattern)), pattern


def test_the_licence_file_is_the_apache_license_pyproject_names():
    text = (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert text.lstrip().startswith("Apache License\n") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150


def source_tree(target: pathlib.Path) -> pathlib.Path:
    """What `pip install` reads of the clone (as an sdist would hold it): a copy, so that the
    build leaves no build/ or egg-info in the clone."""
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, target / name)
    for name in INSTALLED:
        shutil.copytree(
            REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return target


THREE_LINES = """
import pathlib, sys
import numpy as np
from PIL import Image

import idc_inference

folder, output = pathlib.Path(sys.argv[1]), sys.argv[2]
files = sorted(folder.rglob("*.png"))
patches = np.full((len(files), 50, 50, 3), 255, np.uint8)  # border patches padded with white
for i, path in enumerate(files):
    pixels = np.asarray(Image.open(path).convert("RGB"))
    patches[i, : pixels.shape[0], : pixels.shape[1]] = pixels

model = idc_inference.load()
p_idc = model.predict(patches)

np.savez(output, files=[str(f) for f in files], p_idc=p_idc)
print(model.announce())
print(idc_inference.__file__)
"""


@pytest.mark.heavy
def test_pip_install_and_the_three_line_api_from_elsewhere_match_predict(tmp_path):
    folder = unseen_patient()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    source = source_tree(tmp_path / "source")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(source)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    installed = {p.name for p in pathlib.Path(site).iterdir()}
    assert set(INSTALLED) <= installed and not set(NOT_INSTALLED) & installed
    assert (pathlib.Path(site) / "mobilenets/cpu/kernels.cc").is_file()

    script = elsewhere / "three_lines.py"
    script.write_text(THREE_LINES)
    result = subprocess.run(
        [str(python), str(script), str(folder), str(elsewhere / "api.npz")],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=900,
        env=subprocess_environment(test_flags=False),  # XLA as users run it, as predict.py below
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "using the shipped model mobilenet_v1_idc" in result.stdout
    assert str(site) in result.stdout  # the installed package, not the clone
    api = np.load(elsewhere / "api.npz")

    output = tmp_path / "predict.csv"
    predicted = run_program(
        "predict.py", f"--output={output}", str(folder), timeout=900, test_flags=False
    )
    assert predicted.returncode == 0, predicted.stderr
    assert "using the shipped model mobilenet_v1_idc" in predicted.stdout
    with output.open(newline="") as f:
        by_file = {row["file"]: float(row["p_idc"]) for row in csv.DictReader(f)}
    assert len(by_file) == len(api["files"]) > 100
    expected = np.array([by_file[str(f)] for f in api["files"]])
    # The same network, weights and compiled batch: equal up to the CSV's 6 decimals and the
    # rounding of P(IDC) itself.
    bound = 0.5e-6 + 8 * UNIT_ROUNDOFF32
    assert np.max(np.abs(api["p_idc"] - expected)) <= bound
