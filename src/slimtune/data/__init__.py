"""Datasets as train / validation / test tensor splits."""

from slimtune.data.datasets import DATASETS, Splits, load_dataset

__all__ = ["DATASETS", "Splits", "load_dataset"]
