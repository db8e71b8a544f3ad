"""ResNet-50 (He et al. 2016) with the reproduced paper's recipe: Adam 1e-4, 5 epochs, 96x96
inputs. Not a network of that paper: the full-size baseline the MobileNets are meant to replace.

Run:
    python main.py --config=configs/resnet50.py --workdir=/tmp/idc_resnet50

The network is Keras' `ResNet50` layer for layer (convolutions with biases, BatchNorm momentum
0.99 and epsilon 1.001e-5, no dropout); it has no width multiplier, so `model.alpha` must stay 1.
At 96 px with 2 classes it has 23,538,690 parameters, a 3x3 final feature map and 708M
multiply-adds per image, 6.8 times MobileNetV1's 104M (`mobilenets.profile`): expect it to train
far slower than the MobileNets on CPUs, to test ROC AUC 0.922 [0.88, 0.95] on the 37 test
patients of the 245-patient subset (results/real_subset/report.md, "Models compared").
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "resnet50"
    return default.finalize(config)
