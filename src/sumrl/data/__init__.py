"""Data: the Example schema, loaders for user files, built-in datasets, splits and statistics.

Every command gets its examples from :func:`load_data` (a built-in name or a path).
"""

from sumrl.data.builtin import BUILTIN_DATASETS, BuiltinDataset, is_builtin, load_builtin
from sumrl.data.loaders import FieldMap, LoadResult, load_data, load_data_report, load_examples, load_heldout
from sumrl.data.schema import Example
from sumrl.data.splits import hash_split, normalize_split, select_split, split_of
from sumrl.data.stats import compute_stats, context_length_of, distribution

__all__ = [
    "BUILTIN_DATASETS", "BuiltinDataset", "Example", "FieldMap", "LoadResult", "compute_stats",
    "context_length_of", "distribution", "hash_split", "is_builtin", "load_builtin", "load_data",
    "load_data_report", "load_examples", "load_heldout", "normalize_split", "select_split", "split_of",
]
