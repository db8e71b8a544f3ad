"""MobileNetV3-Small (Howard et al. 2019) with the reproduced paper's recipe: Adam 1e-4, 5 epochs,
96x96 inputs. Not a network of that paper: a smaller, newer peer of its MobileNetV1 and V2.

Run:
    python main.py --config=configs/v3_small.py --workdir=/tmp/idc_v3_small

The network is Keras' `MobileNetV3Small` layer for layer: hard-swish, squeeze-and-excitation, 5x5
depthwise kernels, and its Keras defaults (dropout 0.2 before the classifier, BatchNorm momentum
0.999, epsilon 1e-3). At 96 px with 2 classes it has 1,519,906 parameters and a 3x3 final feature
map. `--config.model.name=mobilenet_v3_small_minimalistic` trains Keras' `minimalistic=True`
variant (3x3 kernels, ReLU, no squeeze-and-excitation). What to expect: test ROC AUC 0.904
[0.86, 0.94] on the 37 test patients of the 245-patient subset (results/real_subset/report.md,
"Models compared").
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "mobilenet_v3_small"
    return default.finalize(config)
