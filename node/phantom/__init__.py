"""Synthetic 124I PET/CT studies with ground truth, for tests, the demo and benchmarks."""

from node.phantom.generate import SIZES, PhantomOptions, PhantomResult, generate_phantom

__all__ = ["SIZES", "PhantomOptions", "PhantomResult", "generate_phantom"]
