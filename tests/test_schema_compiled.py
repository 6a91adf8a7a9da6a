"""The validator shipped in the package (compiled ahead of time) matches the schema."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from collections.abc import Callable
from typing import Any

import fastjsonschema
import pytest
import yaml

from rrpcsync.manifests import loader
from rrpcsync.manifests.schema import compiled

from .helpers import EXAMPLES, ROOT


def compile_script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "compile_schema", ROOT / "scripts/compile_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_validator_was_compiled_from_this_schema() -> None:
    digest = hashlib.sha256(loader.schema_text().encode("utf-8")).hexdigest()
    assert digest == compiled.SCHEMA_SHA256, "run python scripts/compile_schema.py"
    assert loader._fast_validator()[0] is compiled.validate


def test_regenerating_gives_the_shipped_file() -> None:
    if fastjsonschema.VERSION != compiled.FASTJSONSCHEMA_VERSION:
        pytest.skip(f"generated with fastjsonschema {compiled.FASTJSONSCHEMA_VERSION}")
    fresh = compile_script().generate(loader.schema_text())
    assert fresh == (ROOT / "rrpcsync/manifests/schema/compiled.py").read_text("utf-8")


def example_documents() -> list[Any]:
    documents = []
    for path in sorted(EXAMPLES.glob("configs/**/*.y*ml")):
        documents += [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]
    assert documents
    return documents


MUTATIONS: list[Callable[[dict[str, Any]], None]] = [
    lambda d: None,
    lambda d: d.pop("apiVersion"),
    lambda d: d.update(apiVersion="rrpcsync/v2"),
    lambda d: d.update(extra=1),
    lambda d: d["metadata"].update(name="Not A Name"),
    lambda d: d["metadata"].update(labels={"bad key!": "x"}),
    lambda d: d["spec"].update(productId=""),
    lambda d: d["spec"].update(devices=[]),
    lambda d: d["spec"].update(devices=[42]),
    lambda d: d["spec"].update(devices=[{"labels": {}}]),
    lambda d: d["spec"].update(devices=[{"name": "dev-1", "colour": "red"}]),
    lambda d: d["spec"].update(priority="high"),
    lambda d: d["spec"].update(dependsOn="other"),
    lambda d: d["spec"].update(rollout={"waves": ["lots"]}),
    lambda d: d["spec"].update(payload=None),
]


@pytest.mark.parametrize("mutate", range(len(MUTATIONS)))
def test_the_shipped_validator_agrees_with_compiling_the_schema(mutate: int) -> None:
    reference = fastjsonschema.compile(json.loads(loader.schema_text()))
    for document in example_documents():
        changed = copy.deepcopy(document)
        MUTATIONS[mutate](changed)
        assert _accepts(compiled.validate, compiled.JsonSchemaValueException, changed) == (
            _accepts(reference, fastjsonschema.JsonSchemaException, changed)
        ), changed
    if mutate == 0:
        assert _accepts(compiled.validate, compiled.JsonSchemaValueException, document)


def _accepts(validate: Callable[[Any], Any], invalid: type[Exception], document: Any) -> bool:
    try:
        validate(document)
    except invalid:
        return False
    return True


def test_a_changed_schema_is_compiled_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "SCHEMA_SHA256", "0" * 64)
    loader._fast_validator.cache_clear()
    try:
        validate, invalid = loader._fast_validator()
        assert validate is not compiled.validate
        assert invalid is fastjsonschema.JsonSchemaException
    finally:
        loader._fast_validator.cache_clear()
