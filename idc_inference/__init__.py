"""P(IDC) from a trained network: of patches, of a patient's patch folder, of a slide.

  predictor.py     Predictor: eval-mode network in one ahead-of-time compiled function, TTA
  patch_files.py   PNG patch files -> P(IDC) -> predictions CSV (predict.py)
  mosaic.py        a patient's Kaggle patches tiled back into their slide, and tinted
  patient_maps.py  the slide maps of one patient folder (heatmap.py)
"""
