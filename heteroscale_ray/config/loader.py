"""Load YAML into validated models, once, at the edge.

Errors name the file, the field path and what would fix it, e.g.::

    services.yaml: services[0].policy.scale_in_tolerance: Input should be less than or
    equal to 1 (got 1.5). Fix: Scale in only when required/current < 1 - this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from heteroscale_ray.config.services import ServicesConfig
from heteroscale_ray.config.topology import TopologySpec

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _field_description(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """Walk the model along the error path to the field's description, our 'how to fix' text."""
    current: Any = model
    desc = None
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return desc
        info = fields[part]
        desc = info.description
        current = _inner_model(info.annotation)
    return desc


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(model: type[BaseModel], err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _loc(loc)
        if e["type"] == "extra_forbidden":
            parent = _inner_model_at(model, loc[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            problems.append(f"{path}: unknown key. Fix: remove it or use one of {allowed}")
            continue
        if e["type"] == "missing":
            desc = _field_description(model, loc)
            problems.append(
                f"{path}: required field is missing. Fix: add it" + (f" ({desc})" if desc else "")
            )
            continue
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        got_s = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        desc = _field_description(model, loc)
        hint = f" Fix: {desc}" if desc and "Fix" not in msg and ":" not in msg else ""
        problems.append(f"{path}: {msg}{got_s}.{hint}")
    return problems


def _inner_model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        current = _inner_model(fields[part].annotation)
    return current


def parse_model(model: type[M], data: Any, source: str = "<config>") -> M:
    """Validate already-parsed data, raising ConfigError with readable problems."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, format_validation_error(model, err)) from None


def load_yaml(path: str | Path, model: type[M]) -> M:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(
            str(path), [f"cannot read file: {e.strerror}. Fix: check the path"]
        ) from None
    return parse_yaml_text(text, model, source=str(path))


def parse_yaml_text(text: str, model: type[M], source: str = "<config>") -> M:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            source,
            [
                f"{where}not valid YAML ({getattr(e, 'problem', e)}). Fix: check indentation and quoting"
            ],
        ) from None
    if data is None:
        raise ConfigError(source, ["file is empty. Fix: see examples/ for a starting point"])
    return parse_model(model, data, source)


def load_services(path: str | Path) -> ServicesConfig:
    return load_yaml(path, ServicesConfig)


def load_topology(path: str | Path) -> TopologySpec:
    return load_yaml(path, TopologySpec)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON schemas users can point their editor at (``heteroscale schema``)."""
    return {
        "services": ServicesConfig.model_json_schema(),
        "topology": TopologySpec.model_json_schema(),
    }


def write_schemas(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        p = out / f"{name}.schema.json"
        p.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(p)
    return written
