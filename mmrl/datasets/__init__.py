"""Datasets: the `Sample` schema, loaders and synthetic task generators."""

from mmrl.datasets.sample import Sample, BadSampleError

__all__ = ["Sample", "BadSampleError"]
