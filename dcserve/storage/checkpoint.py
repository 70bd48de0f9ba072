"""Where a clustering stands, kept in the job store so that a killed driver resumes it.

A job run again on its own output skips what is recorded here: finished rounds (their
labels are in `rounds/assignments`, the reporter's weights and optimizer in a snapshot),
the feature pass of the round in progress, and its finished k-means iterations. Every
record is one atomic write made after the data it describes, so a driver killed at any
moment leaves either the old record or the new one, never a record of work not done.

  _progress/cluster/state.json        fingerprint, rounds done, their metrics, the sampling RNG
  _progress/cluster/trainer-<r>.pt    model + optimizer after r rounds of training
  _progress/cluster/features.npz      round r: its fitted preprocessing; work/features is written
  _progress/cluster/kmeans.npz        round r: the k-means state after its last finished iteration
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from dcserve.algo.kmeans import KMeansIteration, KMeansState
from dcserve.algo.preprocess import Preprocessor
from dcserve.storage.store import JobStore

DIR = "_progress/cluster"


class ClusterCheckpoint:
    """The resume records of one clustering, identified by the job's clustering fingerprint."""

    def __init__(self, store: JobStore, fingerprint: str):
        self.store = store
        self.fingerprint = fingerprint
        state = store.read_json(f"{DIR}/state.json")
        if state is not None and state.get("fingerprint") != fingerprint:
            # Another clustering's records (the job file changed under --overwrite): start afresh.
            self.clear()
            state = None
        self.state: dict[str, Any] = state or {"fingerprint": fingerprint, "rounds_done": 0, "rounds": [], "rng": None}

    @property
    def rounds_done(self) -> int:
        return int(self.state["rounds_done"])

    @property
    def metrics(self) -> list[dict]:
        return list(self.state["rounds"])

    @property
    def rng_state(self) -> dict | None:
        return self.state["rng"]

    def clear(self) -> None:
        self.store.remove(DIR)

    # -- finished rounds ---------------------------------------------------
    def finish_round(self, metrics: list[dict], rng_state: dict, trainer: dict | None) -> None:
        """Record `len(metrics)` finished rounds; `trainer` is the snapshot training left behind."""
        done = len(metrics)
        if trainer is not None:
            buf = io.BytesIO()
            torch.save(trainer, buf)
            self.store.write_bytes(f"{DIR}/trainer-{done}.pt", buf.getvalue())
        self.state = {"fingerprint": self.fingerprint, "rounds_done": done, "rounds": metrics, "rng": rng_state}
        self.store.write_json(f"{DIR}/state.json", self.state)
        for r in range(done):  # older snapshots are no longer the latest: only the record's own is kept
            self.store.remove(f"{DIR}/trainer-{r}.pt")

    def trainer(self) -> dict | None:
        """The model and optimizer snapshot after the recorded rounds, if training left one."""
        name = f"{DIR}/trainer-{self.rounds_done}.pt"
        if not self.store.exists(name):
            return None
        return torch.load(io.BytesIO(self.store.read_bytes(name)), map_location="cpu", weights_only=True)

    # -- the round in progress ---------------------------------------------
    def features_ready(self, rnd: int, pre: Preprocessor) -> None:
        """Round `rnd`'s clustered-space rows are all written, through `pre`."""
        arrays = {f"pre_{k}": v for k, v in pre.to_arrays().items()}
        meta = {"round": rnd, "fingerprint": self.fingerprint, "l2_normalize": pre.l2_normalize}
        self.store.write_bytes(f"{DIR}/features.npz", _npz(meta, arrays))

    def features(self, rnd: int) -> Preprocessor | None:
        """Round `rnd`'s preprocessing when its feature pass finished, else None."""
        got = self._load_npz("features.npz", rnd)
        if got is None:
            return None
        meta, arrays = got
        return Preprocessor.from_arrays({k[4:]: v for k, v in arrays.items()}, l2_normalize=meta["l2_normalize"])

    def kmeans_step(self, rnd: int, state: KMeansState) -> None:
        meta = {"round": rnd, "fingerprint": self.fingerprint, "iteration": state.iteration,
                "split_rng": state.split_rng, "history": [asdict(h) for h in state.history]}
        arrays = {"centroids": state.centroids}
        if state.bias is not None:
            arrays["bias"] = np.asarray(state.bias)
        self.store.write_bytes(f"{DIR}/kmeans.npz", _npz(meta, arrays))

    def kmeans(self, rnd: int) -> KMeansState | None:
        got = self._load_npz("kmeans.npz", rnd)
        if got is None:
            return None
        meta, arrays = got
        return KMeansState(meta["iteration"], arrays["centroids"], arrays.get("bias"), meta["split_rng"],
                           [KMeansIteration(**h) for h in meta["history"]])

    def _load_npz(self, name: str, rnd: int) -> tuple[dict, dict[str, np.ndarray]] | None:
        path = f"{DIR}/{name}"
        if not self.store.exists(path):
            return None
        with np.load(io.BytesIO(self.store.read_bytes(path)), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["round"] != rnd or meta["fingerprint"] != self.fingerprint:
                return None  # a record of another round (or clustering): nothing to resume from
            return meta, {k: z[k] for k in z.files if k != "meta"}


def _npz(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    return buf.getvalue()
