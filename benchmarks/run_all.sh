#!/usr/bin/env bash
# Every benchmark of issue 7, ours then PyTorch's on the same card, in one call of a GPU machine
# that has no network; writes the JSON and one markdown table with ratios.
#
# From a session with the device tool (after `bash benchmarks/make_wheels.sh` here):
#   run(command="bash benchmarks/run_all.sh", carry=[".whl"], timeout_s=600)
# Results go to $OUT when it is set (the device tool fetches it), else to benchmarks/results/:
#   combined.md (the tables), all_results.json (every benchmark's JSON), run_all.log.
#
# Order: the most important numbers first, each stage under its own time limit and all of them
# under BUDGET_S (default 540 s), so a slow stage costs the later ones, not the whole run:
#   1. 96 px (the config's size), JAX, PyTorch eager, torch.compile: the ratios of the goal;
#   2. the paper's whole experiment (5 epochs each of V1 and V2 over 277,524 patches);
#   3. 50 px, the same three;  4. 224 px, the same three (no whole epoch: ~20 s each);
#   5. the full-size slide (issue 31): a 100,000 x 80,000 px 40x slide built, then map_slide.py
#      on it with the shipped model's 8-view TTA (benchmarks/full_size_slide.py; its JSON goes
#      to $RESULTS/full_size_slide.json, beside the tables). It needs ~4 minutes of the budget:
#      ONLY="full-size" runs it alone.
# ONLY=REGEX runs only the stages whose names match (e.g. ONLY="224" to finish a cut-off run).
# JAX runs one process per size (so the device's peak-memory counter starts afresh) with a
# persistent compilation cache that only the paper experiment reuses (the 96 px train steps).
# Nothing here needs TensorFlow. BENCH_SMOKE=1 swaps in a tiny grid to check the plumbing on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
RESULTS=${OUT:-benchmarks/results}
WORK=$(mktemp -d /tmp/bench_run.XXXXXX)  # per-stage JSON; merged into $RESULTS at each stage
mkdir -p "$RESULTS"
LOG="$RESULTS/run_all.log"
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}
exec > >(tee -a "$LOG") 2>&1

# The GPU image lacks clu, ml_collections and tensorflow-datasets: install the carried wheels.
if ! "$PYTHON" -c "import clu, ml_collections, tensorflow_datasets" 2> /dev/null \
  && compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

echo "run_all.sh: $(date -u '+%Y-%m-%d %H:%M:%S') UTC, budget ${BUDGET_S} s"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null \
  || echo "no nvidia-smi: $(grep -m1 'model name' /proc/cpuinfo)"
"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())"

merge() {
  "$PYTHON" benchmarks/compare.py "$WORK"/*.json --out "$RESULTS/combined.md" \
    --json_out "$RESULTS/all_results.json" > /dev/null || echo "compare.py failed"
}

# stage NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, what is left of the budget).
stage() {
  local name=$1 limit=$2
  shift 2
  [[ -n ${ONLY:-} && ! $name =~ $ONLY ]] && return
  local left=$((BUDGET_S - SECONDS))
  if ((left < 30)); then
    echo "=== $name: skipped, ${left} s of the budget left"
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit} s, ${SECONDS} s into the run)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" || echo "=== $name: exit status $?"
  merge
}

if [[ ${BENCH_SMOKE:-0} == 1 ]]; then
  TINY="--alpha 0.25 --steps 2 --warmup 1 --window 1 --feed_batches 2 --base_patches 64"
  stage "jax 32 px (smoke)" 300 "$PYTHON" benchmarks/bench_jax.py $TINY \
    --sizes 32 --batches 8 --epoch_images 32 --out "$WORK/jax_32.json"
  stage "torch 32 px (smoke)" 300 "$PYTHON" benchmarks/bench_torch.py $TINY \
    --sizes 32 --batches 8 --epoch_images 32 --out "$WORK/torch_32.json"
  stage "paper experiment (smoke)" 300 "$PYTHON" benchmarks/bench_jax.py $TINY \
    --paper_experiment --paper_image_size 32 --paper_batch_size 8 --paper_images 64 \
    --out "$WORK/paper.json"
  stage "full-size slide (smoke)" 300 "$PYTHON" benchmarks/full_size_slide.py --width 8000 \
    --height 6000 --notta --out "$RESULTS/full_size_slide.json"
else
  stage "jax 96 px" 120 "$PYTHON" benchmarks/bench_jax.py --sizes 96 \
    --out "$WORK/jax_096.json"
  stage "torch 96 px eager" 60 "$PYTHON" benchmarks/bench_torch.py --sizes 96 \
    --variants eager --out "$WORK/torch_096_eager.json"
  stage "torch 96 px compile" 180 "$PYTHON" benchmarks/bench_torch.py --sizes 96 \
    --variants compile --out "$WORK/torch_096_compile.json"
  stage "paper experiment" 120 "$PYTHON" benchmarks/bench_jax.py --paper_experiment \
    --out "$WORK/paper.json"
  stage "jax 50 px" 90 "$PYTHON" benchmarks/bench_jax.py --sizes 50 \
    --out "$WORK/jax_050.json"
  stage "torch 50 px eager" 45 "$PYTHON" benchmarks/bench_torch.py --sizes 50 \
    --variants eager --out "$WORK/torch_050_eager.json"
  stage "torch 50 px compile" 150 "$PYTHON" benchmarks/bench_torch.py --sizes 50 \
    --variants compile --out "$WORK/torch_050_compile.json"
  stage "jax 224 px" 90 "$PYTHON" benchmarks/bench_jax.py --sizes 224 \
    --epoch_images 0 --out "$WORK/jax_224.json"
  stage "torch 224 px eager" 45 "$PYTHON" benchmarks/bench_torch.py --sizes 224 \
    --variants eager --epoch_images 0 --out "$WORK/torch_224_eager.json"
  stage "torch 224 px compile" 150 "$PYTHON" benchmarks/bench_torch.py --sizes 224 \
    --variants compile --epoch_images 0 --out "$WORK/torch_224_compile.json"
  stage "full-size slide" 420 "$PYTHON" benchmarks/full_size_slide.py \
    --num_threads "$(nproc)" --out "$RESULTS/full_size_slide.json"
fi

merge
echo "=== done in ${SECONDS} s; tables in $RESULTS/combined.md"
cat "$RESULTS/combined.md"
