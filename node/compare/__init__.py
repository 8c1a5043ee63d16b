"""Serial 124I scans: TSH context, pairing, lesion matching, comparison and 131I lesion dosimetry."""
