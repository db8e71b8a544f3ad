"""XLA's temporary memory of the 8-view (TTA) evaluation forward, two ways of running the views.

For each network at 96 px with the evaluation batch of configs/default.py (256 patches, 8
dihedral views, float32, eval mode, CPU): the bytes of temporaries that the compiled program
allocates (`compiled.memory_analysis()`, nothing is run), for

- `one batch`: the views concatenated into one batch of 8 x 256 images, as evaluation did until
  ResNet-50's training run was killed for lack of memory in its validation pass on a 24 GiB
  machine (results/real_subset/report.md), and
- `lax.map`: `evaluation.views.mean_log_probabilities`, one view after the other.

    python benchmarks/eval_memory.py [model ...]
"""

from __future__ import annotations

import os
import pathlib
import sys

BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import harness  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import input_pipeline  # noqa: E402
import mobilenets  # noqa: E402
from configs import default  # noqa: E402
from evaluation import views  # noqa: E402
from input_pipeline.patches import PATCH_SIZE  # noqa: E402

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50")
IMAGE_SIZE = 96


def one_batch_log_probabilities(model, images, preprocess_config, views):
    """The former evaluation: every view of the batch through the network at once."""
    all_views = jnp.concatenate([input_pipeline.dihedral_view(images, k) for k in views])
    inputs = input_pipeline.preprocess(all_views, preprocess_config, train=False, rng=None)
    log_probs = jax.nn.log_softmax(model(inputs))
    per_view = log_probs.reshape(len(views), images.shape[0], -1)
    return jax.nn.logsumexp(per_view, axis=0) - jnp.log(len(views))


def temporary_gib(forward, name: str, config) -> float:
    model = mobilenets.create(name, num_classes=2, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)

    def scores(state, images):
        return forward(nnx.merge(graphdef, state), images, config.preprocess, views.ALL_VIEWS)

    images = jax.ShapeDtypeStruct((config.eval_batch_size, PATCH_SIZE, PATCH_SIZE, 3), jnp.uint8)
    compiled = jax.jit(scores).lower(state, images).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**30


def main() -> None:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("models", nargs="*", default=list(MODELS), help="networks to measure")
    models = parser.parse_args().models
    config = default.get_config()
    config.preprocess.image_size = IMAGE_SIZE
    print(
        f"8-view evaluation forward, batch {config.eval_batch_size}, {IMAGE_SIZE} px, float32, "
        f"{jax.default_backend()}: XLA temporaries, GiB"
    )
    print(f"{'model':<20}{'one batch':>11}{'lax.map':>9}{'ratio':>7}")
    for name in models:
        together = temporary_gib(one_batch_log_probabilities, name, config)
        mapped = temporary_gib(views.mean_log_probabilities, name, config)
        print(f"{name:<20}{together:>11.2f}{mapped:>9.2f}{together / mapped:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
