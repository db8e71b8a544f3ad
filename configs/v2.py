"""MobileNetV2 (Sandler et al. 2018) with the paper's recipe: Adam 1e-4, 5 epochs, 96x96 inputs.

Run:
    python main.py --config=configs/v2.py --workdir=/tmp/idc_v2

Without the Kaggle download this trains on the small synthetic twin (banner at start, "synthetic"
in every output) and finishes in a few minutes on 2 CPU cores. On the real set the paper reports
train / validation accuracy 0.819 / 0.743 (patch-level random split). V2's BatchNorm momentum is
0.999 (Keras), so its running statistics lag far behind the weights in a 5-epoch run: validation
numbers early in training can trail the training accuracy by much more than V1's.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "mobilenet_v2"
    return default.finalize(config)
