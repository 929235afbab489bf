"""docs/configuration.md documents every field of the plans.yaml model, so the reference cannot drift.

A field counts as documented when some code span of the page names it: the dotted path itself
(``records.max_body_bytes``) or a span ending in it (``overage.calls.tiers``, ``tiers[].up_to``).
Add a field to config.py without a line in the reference and this fails, naming the field.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from meterguard._config_schema import FileSchema as _File

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def fields(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        path = prefix + name
        yield path
        stack: list[object] = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from fields(annotation, path + ".")
                break
            stack.extend(typing.get_args(annotation))


def test_every_field_of_the_file_model_is_in_the_reference() -> None:
    spans = {span.strip() for span in re.findall(r"`([^`\n]+)`", DOC.read_text())}
    names = {re.split(r"[\s:=]", span)[0].replace("[]", "") for span in spans}
    missing = []
    for path in fields(_File):
        parts = path.split(".")
        # The last two segments identify a field (quotas.calls vs overage.calls); a top-level one stands alone.
        tail = ".".join(parts[-2:]) if len(parts) > 1 else parts[0]
        if not any(name == path or name.endswith(tail) for name in names):
            missing.append(path)
    assert missing == [], f"document these fields in docs/configuration.md: {missing}"


def test_the_walk_sees_nested_models() -> None:
    paths = set(fields(_File))
    assert {"records.max_body_bytes", "plans.overage.calls.tiers.up_to", "customers.anchor_day"} <= paths
