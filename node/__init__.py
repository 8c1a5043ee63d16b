"""iodine-node: quantify 124I PET/CT radioiodine uptake per lesion beside the PACS."""

__version__ = "0.1.0"
