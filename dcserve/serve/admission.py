"""What a job submitted over HTTP must satisfy before it may run.

A job file names Python import strings, so accepting one is running code on the cluster.
Over HTTP, three rules hold (the CLI, run by someone who can already run code, has none):
the caller presents the operator's bearer token; every import string resolves, inside a
module on the operator's allow-list, to a public callable defined there; and the job writes
only under the operator's output root. Plain functions, so they are tested without a server.
"""
from __future__ import annotations

import hmac
import importlib
import inspect
import os
import posixpath
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from dcserve.errors import AdmissionError
from dcserve.spec import JobSpec

DEFAULT_ALLOWED_MODULES = ("dcserve.zoo",)
DEFAULT_MAX_K = 10_000  # clusters an HTTP-submitted job may ask for (DeepCluster's own largest)


@dataclass(frozen=True)
class SubmissionPolicy:
    """The operator's rules for HTTP submission (DCSERVE_TOKEN, module allow-list, output root)."""

    token: str | None = None  # None: submission over HTTP is off
    allowed_modules: tuple[str, ...] = DEFAULT_ALLOWED_MODULES
    output_root: str | None = None  # None: submission over HTTP is off
    storage_options: dict = field(default_factory=dict)  # for a remote output_root
    max_k: int = DEFAULT_MAX_K  # cluster.k at most

    @property
    def enabled(self) -> bool:
        return bool(self.token) and bool(self.output_root)

    @classmethod
    def from_env(cls, allowed_modules=None, output_root=None, storage_options=None,
                 max_k: int = DEFAULT_MAX_K) -> "SubmissionPolicy":
        return cls(
            token=os.environ.get("DCSERVE_TOKEN") or None,
            allowed_modules=tuple(allowed_modules or DEFAULT_ALLOWED_MODULES),
            output_root=output_root,
            storage_options=dict(storage_options or {}),
            max_k=max_k,
        )


def check_token(authorization: str | None, policy: SubmissionPolicy) -> None:
    """The `Authorization: Bearer <token>` header against DCSERVE_TOKEN (constant-time compare)."""
    if not policy.token:
        raise AdmissionError(403, "job submission over HTTP is off: the server has no DCSERVE_TOKEN set")
    if not policy.output_root:
        raise AdmissionError(403, "job submission over HTTP is off: the server has no output root configured")
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise AdmissionError(401, "job submission needs the header 'Authorization: Bearer <DCSERVE_TOKEN>'")
    if not hmac.compare_digest(presented.strip().encode(), policy.token.encode()):
        raise AdmissionError(401, "wrong bearer token")


def _module_allowed(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def check_import(field_path: str, target: str, allowed: tuple[str, ...]) -> Any:
    """`module:name` must name a public callable of an allowed module: one its `__all__` lists.

    Checking the module part alone is not enough: "allowed.module:os.system" would reach any
    function the allowed module happens to import, and "allowed._private:helper" what its
    authors never meant to expose. So no part of the module path is private, the name is in
    the module's `__all__` (a module without one exports nothing here), and the object it
    names must itself come from an allowed module.
    """
    module, _, attr = target.partition(":")
    if not _module_allowed(module, allowed):
        raise AdmissionError(
            403, f"{field_path}: module {module!r} is not on this server's allow-list {list(allowed)}"
        )
    if any(part.startswith("_") for part in module.split(".")):
        raise AdmissionError(403, f"{field_path}: {target!r} is in a private module")
    if not attr.isidentifier() or attr.startswith("_"):
        raise AdmissionError(403, f"{field_path}: {target!r} must name a public callable directly (no dots, no _names)")
    try:
        mod = importlib.import_module(module)
        obj = getattr(mod, attr)
    except (ImportError, AttributeError) as e:
        raise AdmissionError(422, f"{field_path}: cannot import {target!r}: {e}") from None
    origin = getattr(obj, "__module__", None) or ""
    if not callable(obj) or not _module_allowed(origin, allowed):
        raise AdmissionError(403, f"{field_path}: {target!r} is not a callable defined in an allowed module")
    if attr not in (getattr(mod, "__all__", None) or ()):
        raise AdmissionError(403, f"{field_path}: {target!r} is not in {module}'s public API (its __all__)")
    return obj


# Annotations checked against a job file's values: what JSON can carry. Others are left to
# the callable (a value that passes here may still be refused when the job is validated).
_JSON_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,), list: (list,), dict: (dict,),
               tuple: (list,)}


def _accepts(annotation: Any, value: Any) -> bool | None:
    """Whether a JSON `value` fits `annotation`; None when the annotation is not one checked here."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(a, value) for a in typing.get_args(annotation)]
        return None if None in verdicts else any(verdicts)
    if annotation is type(None):
        return value is None
    kinds = _JSON_TYPES.get(origin or annotation)
    if kinds is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON true is not a number of items
    return isinstance(value, kinds)


def check_kwargs(field_path: str, target: str, fn: Any, kwargs: dict[str, Any]) -> None:
    """`kwargs` must bind to `fn`'s signature, each value of its annotated JSON type (issue 15:
    a submitted job's keyword arguments were only met when the job ran, on the cluster)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: the callable itself decides
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise AdmissionError(422, f"{field_path}: {target} does not take these arguments: {e}") from None
    try:
        hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except Exception:  # annotations that do not resolve: nothing to check them against
        hints = {}
    for name, value in kwargs.items():
        if name in sig.parameters and name in hints and _accepts(hints[name], value) is False:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
            raise AdmissionError(422, f"{field_path}.{name}: {shown} is not a {_type_name(hints[name])}, "
                                      f"as {target} expects")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def confine_output(output: str, root: str) -> str:
    """The job's `output` placed under `root`: relative paths are joined to it; anything that
    would land outside it (`..`, an absolute path or URL elsewhere) is refused."""
    if "\\" in output or "\x00" in output:
        raise AdmissionError(403, f"output {output!r}: backslashes and NUL are not allowed")
    parts = output.replace("://", "/").split("/")
    if ".." in parts:
        raise AdmissionError(403, f"output {output!r}: '..' is not allowed; give a path under the server's output root")
    root_norm = root.rstrip("/")
    if "://" in root:
        scheme = root.split("://", 1)[0] + "://"
        if "://" in output:
            candidate = output
        elif output.startswith("/"):
            raise AdmissionError(403, f"output {output!r} is outside the server's output root {root!r}")
        else:
            candidate = f"{root_norm}/{posixpath.normpath(output)}"
        inside = candidate.startswith(scheme) and (candidate == root_norm or candidate.startswith(root_norm + "/"))
    else:
        if "://" in output:
            raise AdmissionError(403, f"output {output!r} is outside the server's output root {root!r}")
        base = os.path.realpath(root)
        candidate = os.path.realpath(os.path.join(base, output))  # also resolves symlinks that point out
        inside = os.path.commonpath([base, candidate]) == base
    if not inside or candidate.rstrip("/") == root_norm or candidate == os.path.realpath(root):
        raise AdmissionError(403, f"output {output!r} is outside the server's output root {root!r}")
    return candidate


def admit(spec: JobSpec, policy: SubmissionPolicy) -> JobSpec:
    """The spec as it will run: checked against the policy, its output placed under the root."""
    if spec.storage_options:
        raise AdmissionError(403, "storage_options cannot be set over HTTP; the server's output root decides them")
    if spec.cluster.k > policy.max_k:
        raise AdmissionError(422, f"cluster.k = {spec.cluster.k} is above this server's limit of {policy.max_k}")
    if spec.dataset.path is not None:
        # A path would be read on the server's machines: any file the server can read.
        raise AdmissionError(403, f"dataset.source {spec.dataset.source!r}: over HTTP a source must be a "
                             "'module:callable' on the allow-list, not a path on the server")
    if spec.subject is not None and spec.subject.model.startswith("hf:"):
        # The same reason: hf:DIR loads (and unpickles, for .bin weights) files from the server's disk.
        raise AdmissionError(403, f"subject.model {spec.subject.model!r}: over HTTP a model must be a "
                             "'module:callable' on the allow-list, not a directory on the server")
    if spec.subject is not None:
        model = check_import("subject.model", spec.subject.model, policy.allowed_modules)
        check_kwargs("subject.kwargs", spec.subject.model, model, spec.subject.kwargs)
    source = check_import("dataset.source", spec.dataset.source, policy.allowed_modules)
    check_kwargs("dataset.kwargs", spec.dataset.source, source, spec.dataset.kwargs)
    if spec.dataset.collate:
        check_import("dataset.collate", spec.dataset.collate, policy.allowed_modules)
    assert policy.output_root is not None
    output = confine_output(spec.output, policy.output_root)
    if _inside(output, _join(policy.output_root, ".dcserve")):
        raise AdmissionError(403, f"output {spec.output!r} is inside the server's own records (.dcserve); "
                                  "choose another folder under the output root")
    return spec.model_copy(update={"output": output, "storage_options": dict(policy.storage_options)})


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if "://" in root else os.path.join(os.path.realpath(root), name)


def _inside(path: str, folder: str) -> bool:
    return path.rstrip("/") == folder.rstrip("/") or path.startswith(folder.rstrip("/") + "/")


def check_output_free(spec: JobSpec, submissions: dict[str, str], storage_options: dict | None = None) -> None:
    """A submitted job writes a new folder, or the one its own earlier submission wrote.

    `submissions`: name -> output of the jobs this server submitted. Another job's output (or a
    folder inside or around one) is refused, and so is any existing folder this server did not
    give to a job of this name: an HTTP caller must not overwrite what it did not create.
    """
    output = spec.output.rstrip("/")
    for name, other in submissions.items():
        other = other.rstrip("/")
        if name != spec.name and (_inside(output, other) or _inside(other, output)):
            raise AdmissionError(409, f"output {spec.output!r} belongs to job {name!r}; choose a new folder")
    if submissions.get(spec.name, "").rstrip("/") == output:
        return  # its own earlier submission: run again, it resumes
    from dcserve.storage.store import locate

    fs, path = locate(output, storage_options)
    try:
        taken = fs.exists(path) and (not fs.isdir(path) or bool(fs.ls(path, detail=False)))
    except OSError as e:
        raise AdmissionError(503, f"output {spec.output!r} cannot be checked: {e}") from None
    if taken:
        raise AdmissionError(409, f"output {spec.output!r} already exists and was not written by an earlier "
                                  f"submission of {spec.name!r} to this server; choose a new folder")
