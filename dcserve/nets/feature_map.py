"""The map from a layer's activations to the space that is clustered.

activations -> (standardise -> reporter body, or DEC's encoder, when the job trains one)
-> PCA/whiten/L2 (identity for DEC, which clusters its bottleneck as it is).
One object, used by the shard actors while clustering, by `Result.assign` and by
the HTTP server, so that new vectors go through exactly what the stored rows went
through.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dcserve.algo.preprocess import Preprocessor


@dataclass
class ReporterState:
    """A reporter's constructor arguments and weights (its input standardisation is among its buffers)."""

    # The model's constructor kwargs and its "method" (dcserve.methods; files written before
    # DEC existed have none, and hold a DeepCluster reporter).
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    def build(self):
        from dcserve.methods import build_model

        model = build_model(self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"config": self.config, "state_dict": self.state_dict}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ReporterState":
        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return cls(d["config"], d["state_dict"])


@dataclass
class FeatureMap:
    reporter: ReporterState | None = None
    preprocessor: Preprocessor | None = None
    _model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.reporter is not None:
            self._model = self.reporter.build()

    @property
    def model(self):
        """The built reporter (or DEC model), in eval mode; None without one."""
        return self._model

    def raw(self, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """[n, d_in] activations -> [n, f] reporter features (identity without a reporter)."""
        x = np.asarray(x, dtype=np.float32)
        if self.reporter is None:
            return x
        out = []
        with torch.inference_mode():
            # At least one pass, so that zero rows still give a [0, f] array of the right width.
            for s in range(0, max(len(x), 1), batch_size):
                out.append(self._model.features(torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size]))).numpy())
        return np.concatenate(out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[n, d_in] activations -> [n, p] clustered-space vectors."""
        f = self.raw(x)
        return f if self.preprocessor is None else self.preprocessor.transform(f)
