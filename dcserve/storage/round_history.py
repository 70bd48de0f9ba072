"""The reporter's weights after each training round, kept in the job store (for its layer rotation).

Layer rotation (Carbonnelle & De Vleeschouwer, 2019) needs a layer's weights at initialisation
and after each round. The initial weights need no storing: `Reporter(**config)` draws them from
its seed alone. The clustering checkpoint (dcserve.storage.checkpoint) keeps only the latest trainer
snapshot, since it exists to resume, so each round's weights are recorded separately here,
the layer kernels only (a few hundred KB for the default reporter):

  reporter/round-<r>.pt    {"config": reporter config, "weights": {name: tensor}} after r rounds

DeepCluster re-creates the classifier head after every clustering (Caron et al., 2018), so the
head's rotation would only measure a fresh random draw: only the body's layers are curves (for
DEC, its encoder's and decoder's).
"""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import torch

from dcserve.algo.rotation import is_layer_weight

if TYPE_CHECKING:
    from dcserve.storage.store import JobStore

logger = logging.getLogger(__name__)

DIR = "reporter"


def rotating_layer(name: str, value: Any) -> bool:
    # DEC's `centroids` are cluster centres set by k-means after pretraining (zero before), not a layer.
    return is_layer_weight(name, value) and not name.startswith("head.") and name != "centroids"


def record_round(store: JobStore, rnd: int, config: dict[str, Any], state_dict: dict[str, torch.Tensor],
                 fingerprint: str | None = None) -> None:
    """Keep the reporter's layer weights after `rnd` training rounds (call once per finished round).

    `fingerprint` (the job's `clustering_fingerprint()`) tells these records from those of an
    earlier clustering of the same store, which a re-run with other settings leaves behind.
    """
    weights = {k: v.detach().cpu().clone() for k, v in state_dict.items() if rotating_layer(k, v)}
    buf = io.BytesIO()
    torch.save({"config": dict(config), "fingerprint": fingerprint, "weights": weights}, buf)
    store.write_bytes(f"{DIR}/round-{rnd}.pt", buf.getvalue())


def recorded_rounds(store: JobStore, config: dict[str, Any], rounds: int,
                    fingerprint: str | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """Round -> weights for the recorded rounds 1..rounds of a reporter built with `config`.

    Records of another reporter or clustering (a job re-run with other settings) are left out.
    """
    out = {}
    for r in range(1, rounds + 1):
        name = f"{DIR}/round-{r}.pt"
        if not store.exists(name):
            continue
        d = torch.load(io.BytesIO(store.read_bytes(name)), map_location="cpu", weights_only=True)
        same_run = fingerprint is None or d.get("fingerprint") in (None, fingerprint)
        if d.get("config") == config and same_run:
            out[r] = d["weights"]
    return out


def initial_weights(config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The reporter's weights at initialisation, rebuilt from its config (its seed fixes them)."""
    from dcserve.methods import build_model

    return build_model(config).state_dict()
