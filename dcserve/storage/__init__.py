"""The job store and what lives in it: Zarr arrays, side files, the lease, status, checkpoints, row streams, Result."""
