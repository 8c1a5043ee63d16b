"""Results as documents and files: the only writer of results.json, lesions.csv and the result DICOM files.

- node.output.document: the results document and the lesion table, built from node.quant's models (pure).
- node.output.files: writes them and the DICOM objects node.encode builds into a folder.
"""
