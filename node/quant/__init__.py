"""Quantification: a pure core over numpy arrays, in-memory datasets and small frozen dataclasses.

No file or network I/O here (tests/test_quant_purity.py): node.assemble reads the files and hands in
datasets (pixels through a pixel source), node.output turns the models into documents and files.

- study: the per-series pipeline (SUV -> detect -> measure), its settings, which PET series qualify
- models: the results (SeriesResult, Lesion) and the lesion label, site and detection enums
- volume: DICOM slices -> a 3-D volume with its geometry; resampling
- suv, header, suvtypes: SUVbw from PET headers (QIBA rules), DICOM value parsing, other normalisations
- landmarks, detect, significance: body, lungs, bone, trachea from CT; foci above the local noise
- measure, sphere, recovery: per-lesion values and anatomical labels; blurred-sphere fit; partial volume
- ctnodules, ctlesions: solid lung nodules on CT, measured on PET as non-avid (CT) lesions
"""
