"""Encode: results as DICOM objects any PACS viewer shows (SEG, TID 1500 SR, Secondary Capture).

- objects: all objects of one quantified series, and the results document with tracking identities settled
- seg, sr, sc: the IOD builders (highdicom); planar: where an SR point goes
- sc_render: the summary pages' pixels (PIL), apart from the SC IOD; style: colours shared by SC and SEG
- codes: coded concepts; identity: deterministic UIDs
"""
