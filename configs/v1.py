"""MobileNetV1 (Howard et al. 2017) with the paper's recipe: Adam 1e-4, 5 epochs, 96x96 inputs.

Run:
    python main.py --config=configs/v1.py --workdir=/tmp/idc_v1

Without the Kaggle download this trains on the real sample shipped in data/idc_sample (171
patients; the patient split gives 119 train / 26 validation / 26 test patients). Expect a few
minutes on 2 CPU cores and the test metrics of results/sample/README.md, which also has the
measurements behind configs/default.py's batch 16, precise BN and 8-view TTA. The paper reports
train / validation accuracy 0.849 / 0.857 on the full set under its patch-level random split;
results/real_subset/report.md has this recipe on 245 patients.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "mobilenet_v1"
    return default.finalize(config)
