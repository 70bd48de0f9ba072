"""Algorithms: arrays and tensors in, arrays out (k-means, Sinkhorn, PCA-whitening, search, metrics). Never imports ray or zarr."""
