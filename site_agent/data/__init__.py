"""Ingestion: local labelled images into one in-memory :class:`LocalDataset`."""

from site_agent.data._catalog import CatalogEntry, TaskCatalog, default_catalog, load_task_file
from site_agent.data._dataset import LocalDataset, Split
from site_agent.data._files import load_csv_manifest, load_image_folder
from site_agent.data._images import DICOM_PIXEL_TAGS, decode_image, is_dicom
from site_agent.data._load import load_local_data
from site_agent.data._medmnist import find_medmnist, load_medmnist, medmnist_filename

__all__ = [
    "DICOM_PIXEL_TAGS",
    "CatalogEntry",
    "LocalDataset",
    "Split",
    "TaskCatalog",
    "decode_image",
    "default_catalog",
    "find_medmnist",
    "is_dicom",
    "load_csv_manifest",
    "load_image_folder",
    "load_local_data",
    "load_medmnist",
    "load_task_file",
    "medmnist_filename",
]
