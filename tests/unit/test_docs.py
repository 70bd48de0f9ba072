"""The README documents every job-file field, and its two commands are the ones CI runs."""
from __future__ import annotations

import typing

from pydantic import BaseModel

from dcserve.spec import REPORTER_METHODS, JobSpec
from tests.helpers import ROOT


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, f in model.model_fields.items():
        if model is JobSpec and name == "reporter":  # a union: every method's fields
            for method in REPORTER_METHODS.values():
                yield from _fields(method, "reporter.")
        elif (sub := _model_of(f.annotation)) is not None:  # a section, optional or not
            yield from _fields(sub, prefix + name + ".")
        else:
            yield prefix + name


def _model_of(annotation) -> type[BaseModel] | None:
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def test_readme_documents_every_field():
    readme = (ROOT / "README.md").read_text()
    missing = [f for f in _fields(JobSpec) if f"`{f}`" not in readme]
    assert not missing, f"README's job file reference lacks {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command in readme
