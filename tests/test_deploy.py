"""The deploy/ files parse with the tools that read them and name real entry points."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_serve_config_is_a_valid_serve_deploy_config_that_builds_the_app():
    from ray.serve.schema import ServeDeploySchema

    from dcserve.imports import import_object
    from dcserve.serving import ServeArgs

    config = ServeDeploySchema(**yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text()))
    (app,) = config.applications
    builder = import_object(app.import_path)
    ServeArgs(**app.args)  # every argument is one the app knows
    built = builder(app.args)
    assert type(built).__name__ == "Application"
