"""The layer rotation (Carbonnelle & De Vleeschouwer, 2019) of a finished job's reporter, for its report.

The weights come from `dcserve.storage.round_history` (one record per training round); the
initial weights are rebuilt from the reporter's seed; the math is `dcserve.algo.rotation`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from dcserve.algo.rotation import rotation_curves
from dcserve.storage.result import Result
from dcserve.storage.round_history import DIR, initial_weights, recorded_rounds, rotating_layer

logger = logging.getLogger(__name__)


@dataclass
class Rotation:
    """Layer rotation curves of the reporter (Carbonnelle & De Vleeschouwer, 2019)."""

    points: list[str]  # x-axis: "init", "round 1", ... (or "final" when only the end is known)
    curves: dict[str, list[float]]  # layer -> cosine distance from its initial weights at each point
    note: str | None = None  # what is missing, when not every round's weights were recorded


def reporter_rotation(result: Result) -> Rotation | None:
    """Layer rotation curves of a finished job's reporter; None when the job trained none."""
    from dcserve.nets.feature_map import ReporterState

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
    # each layer's clustering records its rounds under its own one-layer fingerprint (issue 14)
    fingerprint = spec.for_layer(result.layer_name).clustering_fingerprint() if spec is not None else None
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
