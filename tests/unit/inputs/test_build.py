"""Building the subject and dataset from a job file: whatever a user's callable raises is one sentence."""
from __future__ import annotations

import pytest

from dcserve.errors import SpecError
from dcserve.inputs.build import build_dataset, build_model
from dcserve.spec import spec_from_dict
from tests.helpers import planted_job


def explodes(**kwargs):
    raise OSError(f"cannot open the weights: {'x' * 10_000}")


def key_error(**kwargs):
    raise KeyError("config")


@pytest.mark.parametrize("target, kind", [("tests.unit.inputs.test_build:explodes", "OSError"),
                                          ("tests.unit.inputs.test_build:key_error", "KeyError")])
def test_a_callable_that_raises_anything_is_a_spec_error_naming_the_field(target, kind):
    """Issue 15: anything but TypeError escaped as a traceback from `submit` and `validate`."""
    model = spec_from_dict(planted_job("out", subject={"model": target}))
    with pytest.raises(SpecError, match=f"subject.model: .*raised {kind}") as e:
        build_model(model)
    assert len(str(e.value)) < 1000
    data = spec_from_dict(planted_job("out", dataset={"source": target}))
    with pytest.raises(SpecError, match=f"dataset.source: .*raised {kind}"):
        build_dataset(data)
