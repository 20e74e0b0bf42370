"""Data layer: the `Interactions` CSR type, readers, splits and the dataset registry.

Typical use::

    from rankrobust.data import load_dataset
    ds = load_dataset("lastfm")              # embedded default
    ds = load_dataset("yelp2018", data_dir="../shared/data", valid_is_test=True)
"""
from rankrobust.data.errors import DataFormatError, DataNotFoundError
from rankrobust.data.interactions import Interactions
from rankrobust.data.readers import TableData, read_lightgcn, read_table, write_lightgcn
from rankrobust.data.downloads import download_dataset
from rankrobust.data.popularity import POPULARITY_VARIANTS, item_popularity
from rankrobust.data.registry import DatasetInfo, dataset_files, download, list_datasets, load_dataset, load_files
from rankrobust.data.splits import Dataset, carve_validation, dataset_stats, split_per_user

__all__ = [
    "Interactions",
    "Dataset",
    "DatasetInfo",
    "DataFormatError",
    "DataNotFoundError",
    "TableData",
    "load_dataset",
    "load_files",
    "list_datasets",
    "dataset_stats",
    "read_lightgcn",
    "read_table",
    "write_lightgcn",
    "carve_validation",
    "split_per_user",
    "download",
    "download_dataset",
    "dataset_files",
    "item_popularity",
    "POPULARITY_VARIANTS",
]
