"""The neighbourhood input: each patch seen with its 8 grid neighbours, the paper's recipe
otherwise (Adam 1e-4, 5 epochs, cross-entropy, pooling and a dense layer).

Run (any network of mobilenets.ARCHITECTURES; MobileNetV2 by default):
    python main.py --config=configs/window3.py --config.model.name=mobilenet_v2 \\
        --workdir=/tmp/idc_v2_window3

The input is the 3 x 3 window of Kaggle patches centred on the patch judged (150 x 150 pixels at
the patches' 4 um per pixel: 600 um of tissue), with white where the grid holds no patch; the
label is the centre's (input_pipeline/windows.py). It is fed at its native 150 px, not resized,
so the centre keeps every pixel of the patch network's input, at 2.4x its multiply-adds. IDC is a
region: the window shows the architecture around the patch that a pathologist reads at low
power. map_slide.py reads the same window around every tile (one read of a 600 um region).
On the shared sample most patients are scattered patches, so most windows are mostly white;
results/frozen_test/report.md has what it gained on the 245-patient data.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "mobilenet_v2"
    config.data.window = 3
    config.preprocess.image_size = 150
    return default.finalize(config)
