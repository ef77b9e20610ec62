"""Segmenting CT volumes with an exported model: what predict.py does and the full-volume
evaluation uses, so both see the pixels training saw.

  cases.py      reading a case (one volume, a LiTS folder, a CSV manifest) as the ExampleGen does
  model.py      loading the exported SavedModel and its slice settings
  segmenter.py  model grid -> source grid: probabilities, labels, the input's own orientation
  writers.py    the mask file and predictions.csv
  runs.py       one volume, or a folder / manifest with a summary (predict.py's two modes)
"""
