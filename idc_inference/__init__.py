"""P(IDC) from a trained network: of patches, of a patient's patch folder, of a slide.

  import idc_inference
  model = idc_inference.load()          # the shipped model; or load(workdir or weights file)
  p_idc = model.predict(patches)        # uint8 RGB [N, H, W, 3] -> float32 P(IDC) [N]

model.py         load() and IDCModel: the shipped model, a run or a weights file, with the
                 run's own TTA and validation threshold; input checks and resizing
weights.py       inference weights: parameters + BatchNorm statistics as safetensors, with a
                 JSON record (config, step, threshold, patients, summary); no orbax, no pickle
export_onnx.py   the eval-mode network as ONNX (jax2onnx, in the export venv), P(IDC) out
shipped/         the shipped model (export_model.py wrote it; MODEL_CARD.md describes it)
errors.py        the user's mistakes (one line, exit status 2 in the programs)
training_runs.py the one door to a training run's workdir (the only import of `trainer`)
programs.py      what predict.py and heatmap.py share: the model as a program loads it,
                 the JSON record beside their outputs
predictor.py     Predictor: eval-mode network in one ahead-of-time compiled function, TTA
patch_files.py   PNG patch files -> P(IDC) -> predictions CSV (predict.py)
tiles.py         the one streaming pipeline (PNG files or slide tiles -> P(IDC)): reading
                 threads overlap the network, bounded memory, unreadable items listed
slide_files.py   whole-slide files through OpenSlide: opening (SlideError), scale
                 (KAGGLE_PATCH_MPP, cited), best pyramid level, a level's region resampled
slide_tiff.py    TIFF containers (tifffile): truncated-file detection, pyramidal TIFF writing
slide_tiles.py   tiles at the training scale: the grid with its tissue share, the level they
                 are read from, thread-safe reading that survives an unreadable tile
slide_thumbnails.py  the whole slide at low resolution, read in bands
tissue.py        tissue on a thumbnail: Otsu on saturation (scikit-image)
regions.py       tiles called IDC -> valid polygons -> QuPath GeoJSON annotations, Dice
overlay.py       P(IDC) blended over the slide thumbnail, colour bar, scale bar in mm
slide_maps.py    one slide's map, step by step (map_slide.py)
slide_labels.py  ground truth for a slide: x/y or Kaggle-name CSVs, tile metrics, region Dice
slide_outputs.py a slide map's files (CSV, GeoJSON, overlay, summary JSON), written atomically
mosaic.py        a patient's Kaggle patches tiled back into their slide, and tinted
patient_maps.py  the slide maps of one patient folder (heatmap.py)
"""


def load(workdir=None, *, checkpoint="latest", tta=None, threshold=None, batch_size=256):
    """The shipped model (workdir None), or a training run's, or a weights file's: an `IDCModel`.

    tta and threshold None: the run's own evaluation settings (its `eval_tta`, the threshold
    tuned on its validation patients). `idc_inference.model.load` documents every argument.
    """
    from idc_inference.model import load as load_model  # noqa: PLC0415 (keeps the import light)

    return load_model(
        workdir, checkpoint=checkpoint, tta=tta, threshold=threshold, batch_size=batch_size
    )


__all__ = ["load"]
