"""Datasets as train / validation / test splits, read in batches."""

from slimtune.data.datasets import DATASETS, Splits, load_dataset
from slimtune.data.split import Batch, Split, TensorSplit, as_split

__all__ = ["DATASETS", "Splits", "load_dataset", "Batch", "Split", "TensorSplit", "as_split"]
