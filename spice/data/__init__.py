"""Data layer: events, batches, readers for both PILArNet formats, downloads, synthetic events."""
from spice.data.event import (PILARNET_FIVETYPES, PILARNET_M, VOXEL_SIZE_CM, Batch, DataError, Event,
                              collate)
from spice.data.larcv import read_larcv_root
from spice.data.pilarnet_m import read_pilarnet_m, write_pilarnet_m
from spice.data.dataset import EventDataset
from spice.data.summary import summary

__all__ = ["Event", "Batch", "collate", "DataError", "PILARNET_FIVETYPES", "PILARNET_M", "VOXEL_SIZE_CM",
           "read_larcv_root", "read_pilarnet_m", "write_pilarnet_m", "EventDataset", "summary", "synthetic"]


def __getattr__(name):
    """`spice.data.synthetic` (and the other submodules) load on first use, so importing spice.data
    stays light and does not fail while a submodule is missing."""
    if name in ("synthetic", "download", "cli"):
        import importlib
        return importlib.import_module(f"spice.data.{name}")
    raise AttributeError(f"module 'spice.data' has no attribute {name!r}")
