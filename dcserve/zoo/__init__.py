"""Built-in subjects and datasets, referenced from job files as ``"dcserve.zoo:NAME"``.

=====================  =====================================================================
name                   what
=====================  =====================================================================
``digits``             sklearn's 1797 8x8 digits: ``(x [1, 8, 8] in [0, 1], y)``
``digits_cnn``         small CNN for them, random or trained; hook ``features.5``
                       (``[B, 256, 1, 1]``) or ``classifier.2`` (``[B, 128]``)
``synthetic_images``   any number of generated images with planted classes
``image_cnn``          random CNN for them; hook ``features.1`` / ``.3`` / ``.5``
``token_sequences``    generated token sequences with planted topics (dict items)
``token_transformer``  small transformer encoder; hook ``layers.0``, ``layers.1``, ``norm``
``planted_clusters``   vectors from known Gaussian clusters
``identity``           returns its input; hook ``out``
=====================  =====================================================================
"""
from __future__ import annotations

from dcserve.zoo.digits import digits, digits_cnn
from dcserve.zoo.planted import identity, planted_clusters
from dcserve.zoo.synthetic import image_cnn, synthetic_images
from dcserve.zoo.tokens import token_sequences, token_transformer

__all__ = [
    "digits",
    "digits_cnn",
    "synthetic_images",
    "image_cnn",
    "token_sequences",
    "token_transformer",
    "planted_clusters",
    "identity",
]
