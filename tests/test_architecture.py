"""The repository's layering: imports run one way,

    programs (main, predict, heatmap, reproduce, ...) -> experiment -> idc_inference, trainer
    idc_inference, trainer -> evaluation -> input_pipeline; trainer, idc_inference -> mobilenets

experiment (the paper's runs and report) judges what idc_inference (P(IDC) of patches and
slides) ships, such as the slide-context stage, so it may import it; inference never imports
the experiment. In the training library only start-up touches the CPU
path's process settings, and the network definitions never import the CPU path.

Checked on the source (every import statement, also those inside functions) and by importing the
programs with tensorflow_datasets blocked: inference and start-up never need TFDS.
"""

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = tuple(sorted(path.stem for path in REPO.glob("*.py")))
# package -> the top-level names it may import from this repository
ALLOWED = {
    "mobilenets": {"mobilenets"},
    "input_pipeline": {"input_pipeline"},
    "configs": {"configs"},
    "evaluation": {"evaluation", "input_pipeline"},
    "trainer": {"trainer", "evaluation", "mobilenets", "input_pipeline"},
    "experiment": {
        "experiment",
        "idc_inference",
        "trainer",
        "evaluation",
        "mobilenets",
        "input_pipeline",
    },
    "idc_inference": {"idc_inference", "evaluation", "mobilenets", "input_pipeline"},
}
# The one module of a package allowed one more import, and why: a training run's checkpoint is
# the trainer's own format, so opening a run's workdir goes through the training library.
DOOR = {"idc_inference/training_runs.py": {"trainer"}}
# The definitions a reader learns from never reach the speed path.
DEFINITIONS = tuple(
    f"mobilenets/{name}.py"
    for name in ("layers", "network", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "resnet")
)
LOCAL_NAMES = {*ALLOWED, *PROGRAMS, "tests", "benchmarks"}


def imported_modules(path: pathlib.Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_downwards(package):
    for path in sorted((REPO / package).rglob("*.py")):
        local = {m.split(".")[0] for m in imported_modules(path)} & LOCAL_NAMES
        allowed = ALLOWED[package] | DOOR.get(str(path.relative_to(REPO)), set())
        assert local <= allowed, f"{path.relative_to(REPO)} imports {local}"


def test_only_start_up_reaches_the_cpu_path_from_the_training_library():
    users = {
        path.name
        for path in (REPO / "trainer").glob("*.py")
        if any(m.startswith("mobilenets.cpu") for m in imported_modules(path))
    }
    assert users <= {"startup.py"}, users


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_definition_modules_never_import_the_cpu_path(definition):
    modules = imported_modules(REPO / definition)
    assert not any(m.startswith("mobilenets.cpu") for m in modules), modules


def test_programs_import_without_tensorflow_datasets():
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        sys.path.insert(0, {str(REPO)!r})

        class Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow_datasets", "tensorflow"):
                    raise ImportError(f"{{name}} is blocked in this test")

        sys.meta_path.insert(0, Blocked())
        import main, predict, heatmap, reproduce  # every program whose imports must stay light
        import idc_inference.patch_files, idc_inference.patient_maps
        import input_pipeline
        print("OK")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_inference_runs_without_the_training_library():
    """Every idc_inference module imports, and the shipped model loads and predicts, with
    `trainer`, clu, orbax and TensorFlow unimportable (the export venv has none of them); the
    P(IDC) equals this process's, and a training run's workdir is refused in one line."""
    import json  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    import idc_inference  # noqa: PLC0415
    from input_pipeline.patches import find_png_files, load_patch  # noqa: PLC0415

    files, _ = find_png_files([str(REPO / "data" / "idc_sample")])
    files = [str(f) for f in sorted(files)[:6]]
    script = textwrap.dedent(
        f"""
        import importlib.abc, json, pkgutil, sys
        sys.path.insert(0, {str(REPO)!r})
        BLOCKED = ("trainer", "clu", "orbax", "tensorflow", "tensorflow_datasets")

        class Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this test")

        sys.meta_path.insert(0, Blocked())
        import idc_inference
        for module in pkgutil.iter_modules(idc_inference.__path__):
            if module.name != "export_onnx":  # jax2onnx: the export venv's own test
                __import__(f"idc_inference.{{module.name}}")
        from idc_inference import errors, training_runs
        from input_pipeline.patches import load_patch
        import numpy as np
        model = idc_inference.load(tta=False)
        images = np.stack([load_patch(f).image for f in {files!r}])
        try:
            training_runs.run_directory("some_run")
            refused = None
        except errors.ModelSourceError as error:
            refused = str(error)
        print(json.dumps({{"p": model.predict(images).tolist(), "refused": refused}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert "training library" in answer["refused"]
    images = np.stack([load_patch(f).image for f in files])
    here = idc_inference.load(tta=False).predict(images)
    np.testing.assert_allclose(answer["p"], here, rtol=0, atol=1e-6)
