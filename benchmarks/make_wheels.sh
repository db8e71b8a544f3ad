#!/usr/bin/env bash
# Downloads, here where pip reaches PyPI, the wheels that the GPU machines' image lacks, into .whl/
# (git-ignored), for `benchmarks/run_all.sh` to install there with no network.
#
# That image (Python 3.12, x86-64) already holds jax (CUDA), flax, optax, orbax-checkpoint, numpy,
# absl-py, etils, protobuf, wrapt, tqdm, matplotlib, pillow, torch, torchvision and timm. The project
# imports three more families at run time:
#   - ml_collections and clu: `trainer/` imports them at module level (configs, metrics);
#   - tensorflow-datasets with its import-time needs (immutabledict, promise, tensorflow-metadata,
#     googleapis-common-protos, toml, termcolor, importlib_resources) and the array_record and
#     dm-tree extensions it uses to build and read the data sets: only `main.py` and
#     `input_pipeline.load_dataset` need them, the benchmarks do not, but a GPU session that
#     trains wants them too;
#   - the slide stack of map_slide.py (`benchmarks/full_size_slide.py`): openslide-python and the
#     OpenSlide library's wheel, tifffile, shapely, scikit-image (with lazy-loader, imageio,
#     networkx) and safetensors (the shipped weights).
# This list was read off `sys.modules` after importing the trainer and building a small data set
# in this repo's .venv, minus what the image has. Versions are this repo's .venv pins.
#
# Usage (from the repo root): bash benchmarks/make_wheels.sh   # then carry ".whl" to the device
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEST=.whl
mkdir -p "$DEST"

# Extensions: cp312 manylinux wheels only.
BINARY=(
  array_record==0.8.6
  dm-tree==0.1.10
  openslide-python==1.4.7
  openslide-bin==4.0.1.2
  shapely==2.2.0
  scikit-image==0.26.0
  safetensors==0.8.0
)
# Pure Python.
PURE=(
  ml_collections==1.1.0
  clu==0.0.12
  tensorflow-datasets==4.9.10
  tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0
  immutabledict==4.3.1
  importlib_resources==7.1.0
  promise==2.3
  termcolor==3.3.0
  toml==0.10.2
  tifffile==2026.3.3
  lazy-loader==0.6
  imageio==2.38.2
  networkx==3.6.1
)

PLATFORMS=()
for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$platform")
done

for requirement in "${BINARY[@]}"; do
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$requirement"
done
for requirement in "${PURE[@]}"; do
  # Most ship a py3-none-any wheel; a few (promise) only an sdist, built here into a wheel.
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform any -d "$DEST" "$requirement" 2>/dev/null; then
    echo "no wheel on PyPI for $requirement: building one from its sdist"
    "$PYTHON" -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST" "$requirement"
  fi
done

# One version of each: two would stop `pip install --no-index` on the device.
ls "$DEST"
du -ch "$DEST"/*.whl | tail -1
