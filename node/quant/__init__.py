"""Quantification: a pure core over numpy arrays and small frozen dataclasses."""
