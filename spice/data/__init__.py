"""Data layer: events, batches, readers for both PILArNet formats, downloads, synthetic events."""
from spice.data.event import (PILARNET_FIVETYPES, PILARNET_M, VOXEL_SIZE_CM, Batch, DataError, Event,
                              collate)

__all__ = ["Event", "Batch", "collate", "DataError", "PILARNET_FIVETYPES", "PILARNET_M", "VOXEL_SIZE_CM"]

# Readers, dataset, summary and the synthetic generator are added below as their modules land.
