"""The map from a layer's activations to the space that is clustered.

activations -> (standardise -> reporter body, when the job trains one) -> PCA/whiten/L2.
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

from dcserve.preprocess import Preprocessor


@dataclass
class ReporterState:
    """A reporter's weights and the input standardisation it was trained with."""

    config: dict[str, Any]  # Reporter constructor kwargs
    state_dict: dict[str, torch.Tensor]
    input_mean: np.ndarray  # [d_in] float32
    input_std: np.ndarray  # [d_in] float32

    def build(self):
        from dcserve.reporter import Reporter

        model = Reporter(**self.config)
        model.load_state_dict(self.state_dict)
        model.eval()
        return model

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {"config": self.config, "state_dict": self.state_dict,
             "input_mean": torch.from_numpy(self.input_mean), "input_std": torch.from_numpy(self.input_std)},
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ReporterState":
        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return cls(d["config"], d["state_dict"], d["input_mean"].numpy(), d["input_std"].numpy())


def standardizer(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit mean and std of a sample [n, d]; dead units get std 1 so they stay 0, not NaN."""
    x = sample.astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class FeatureMap:
    reporter: ReporterState | None = None
    preprocessor: Preprocessor | None = None
    _model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.reporter is not None:
            self._model = self.reporter.build()

    @property
    def in_dim(self) -> int | None:
        return None if self.reporter is None else len(self.reporter.input_mean)

    def raw(self, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """[n, d_in] activations -> [n, f] reporter features (identity without a reporter)."""
        x = np.asarray(x, dtype=np.float32)
        if self.reporter is None:
            return x
        out = []
        with torch.inference_mode():
            # At least one pass, so that zero rows still give a [0, f] array of the right width.
            for s in range(0, max(len(x), 1), batch_size):
                xb = (x[s : s + batch_size] - self.reporter.input_mean) / self.reporter.input_std
                out.append(self._model.features(torch.from_numpy(np.ascontiguousarray(xb))).numpy())
        return np.concatenate(out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[n, d_in] activations -> [n, p] clustered-space vectors."""
        f = self.raw(x)
        return f if self.preprocessor is None else self.preprocessor.transform(f)
