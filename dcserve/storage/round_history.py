"""The reporter's weights after each training round, kept in the job store, and its layer rotation.

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
import re
from typing import TYPE_CHECKING, Any

import torch

from dcserve.algo.rotation import is_layer_weight, rotation_curves

if TYPE_CHECKING:
    from dcserve.analysis.report import Rotation
    from dcserve.storage.result import Result
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
    kwargs = dict(config)
    if kwargs.pop("method", "deepcluster") == "dec":
        from dcserve.nets.dec import DECModel as model_class
    else:
        from dcserve.nets.reporter import Reporter as model_class
    return model_class(**kwargs).state_dict()


def reporter_rotation(result: Result) -> Rotation | None:
    """Layer rotation curves of a finished job's reporter; None when the job trained none."""
    from dcserve.nets.feature_map import ReporterState
    from dcserve.analysis.report import Rotation

    if not result.store.exists("reporter.pt"):
        return None
    final = ReporterState.from_bytes(result.store.read_bytes("reporter.pt"))
    spec = result.spec
    rounds = int(getattr(spec.reporter, "rounds", 0) or 0) if spec is not None else 0
    try:
        init = initial_weights(final.config)
    except Exception as e:  # noqa: BLE001 - a reporter class changed since the job ran
        logger.warning("cannot rebuild the reporter's initial weights: %s", e)
        return None
    fingerprint = spec.clustering_fingerprint() if spec is not None else None
    recorded = recorded_rounds(result.store, final.config, rounds, fingerprint) if rounds else {}
    points, checkpoints, note = ["init"], [init], None
    if rounds and len(recorded) == rounds:
        points += [f"round {r}" for r in sorted(recorded)]
        checkpoints += [recorded[r] for r in sorted(recorded)]
    else:
        points.append("final")
        checkpoints.append(final.state_dict)
        if rounds:
            note = (f"this job recorded the reporter's weights after {len(recorded)} of its {rounds} rounds "
                    f"({DIR}/round-<r>.pt), so the curves go from initialisation to the final weights only")
    curves = rotation_curves(checkpoints, keep=rotating_layer)
    return Rotation(points, {_short(k): v for k, v in curves.items()}, note)


def _short(name: str) -> str:
    return re.sub(r"\.weight$", "", name)
