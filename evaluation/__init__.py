"""How P(IDC) is judged, shared by training, inference and the experiment: the metrics
(`metrics.py`: ROC AUC, balanced accuracy, calibration, thresholds), intervals from a bootstrap
over patients (`uncertainty.py`) and the test-time views a prediction averages (`views.py`).
Imports only `input_pipeline` (for the views' preprocessing), so inference needs no trainer."""
