"""MobileNetV2 (Sandler et al. 2018) with the paper's recipe: Adam 1e-4, 5 epochs, 96x96 inputs.

Run:
    python main.py --config=configs/v2.py --workdir=/tmp/idc_v2

Without the Kaggle download this trains on the real sample shipped in data/idc_sample, like
configs/v1.py, in a few minutes on 2 CPU cores. On the full set, under its patch-level random
split, the paper reports train / validation accuracy 0.819 / 0.743; results/real_subset/report.md
has this recipe on 245 patients under both splits. V2's BatchNorm momentum is 0.999 (Keras): after
the few hundred steps of a 5-epoch run on a small set its moving averages still hold about half
their initial values (0.999^725 = 0.48). The default precise-BN recalibration (configs/default.py,
figures in results/sample/README.md) recomputes the statistics from training batches before
evaluating.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "mobilenet_v2"
    return default.finalize(config)
