"""Encode: results as DICOM objects any PACS viewer shows (SEG, TID 1500 SR, Secondary Capture)."""
