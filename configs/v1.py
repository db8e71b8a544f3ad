"""MobileNetV1 (Howard et al. 2017) with the paper's recipe: Adam 1e-4, 5 epochs, 96x96 inputs.

Run:
    python main.py --config=configs/v1.py --workdir=/tmp/idc_v1

Without the Kaggle download this trains on the small synthetic twin (banner at start, "synthetic"
in every output) and finishes in a few minutes on 2 CPU cores; expect validation balanced accuracy
around 0.9 there. On the real set (README, "Using the real Kaggle data") the paper reports train /
validation accuracy 0.849 / 0.857 (patch-level random split); under the default patient-level split
expect accuracy in the mid 0.8s, to be read against the ~0.72 majority-class baseline.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "mobilenet_v1"
    return default.finalize(config)
