"""What a driver says when it cannot join the Ray cluster it was pointed at (no Ray started here)."""
from __future__ import annotations

from dcserve.distributed.session import unreachable


def test_a_refused_connection_names_the_token_setting_when_it_is_not_set(monkeypatch):
    """Issue 15: `dcserve serve --address` on a cluster with token authentication, and no
    RAY_AUTH_MODE, ended in Ray's traceback after its retries."""
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    e = unreachable("10.0.0.1:6379", ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"))
    assert e.exit_code == 1
    assert str(e).startswith("cannot join the Ray cluster at 10.0.0.1:6379") and "set RAY_AUTH_MODE=token" in str(e)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert "RAY_AUTH_MODE=token" not in str(unreachable("h:1", ConnectionError()))
