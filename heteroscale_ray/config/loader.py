"""Load YAML into validated models, once, at the edge.

Errors name the file, the field path and what would fix it, e.g.::

    services.yaml: services[0].policy.scale_in_tolerance: Input should be less than or
    equal to 1 (got 1.5). Fix: Scale in only when required/current < 1 - this.

Whatever the text, the only exception out of here is ConfigError: bytes that are not UTF-8,
YAML that does not parse, nests too deeply or repeats a key in one mapping, and values YAML
cannot build (e.g. the date 2024-13-01) are all named with their line.
"""

from __future__ import annotations

import json
import re
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


_MAX_GOT_CHARS = 80  # an offending value is quoted up to this long
MAX_YAML_DEPTH = 64  # nested lists/mappings; valid files need under 10 (PyYAML slows as n^2)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last one
    silently) and reports a value it cannot build as a YAML error at that value's line."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"lists or mappings nest deeper than {MAX_YAML_DEPTH} levels. Fix: flatten them",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (
            ValueError,
            TypeError,
            OverflowError,
            IndexError,
        ) as e:  # !!int x, !!int "", 2024-13-01
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.tag.rsplit(':', 1)[-1]} value: {e}", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key_node.value!r} appears twice in one mapping. Fix: keep one",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


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
        if e["type"] == "invalid_key":  # a non-string key; pydantic puts the key in the path
            problems.append(
                f"{_loc(loc[:-1])}: key {_short(loc[-1])} is not a string. Fix: quote it or "
                "remove it"
            )
            continue
        if e["type"] == "missing":
            desc = _field_description(model, loc)
            problems.append(
                f"{path}: required field is missing. Fix: add it" + (f" ({desc})" if desc else "")
            )
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in {"model_type", "model_attributes_type", "dict_type"}:
            msg = "expected a mapping (key: value pairs)"  # not pydantic's model class name
        got = e.get("input")
        got_s = "" if isinstance(got, dict | list) or got is None else f" (got {_short(got)})"
        desc = _field_description(model, loc)
        hint = f" Fix: {desc}" if desc and "Fix" not in msg and ":" not in msg else ""
        problems.append(f"{path}: {msg}{got_s}.{hint}")
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_GOT_CHARS else text[: _MAX_GOT_CHARS - 3] + "..."


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
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            str(path), [f"cannot read file: {e.strerror}. Fix: check the path"]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            str(path),
            [f"line {line}: byte 0x{raw[e.start]:02x} is not UTF-8. Fix: save the file as UTF-8"],
        ) from None
    return parse_yaml_text(text, model, source=str(path))


_BRACKET = re.compile(r"[\[\]{}]")


def _check_flow_depth(text: str, source: str) -> None:
    """Refuse runs of flow brackets far deeper than MAX_YAML_DEPTH before PyYAML's scanner,
    whose time grows as the square of their depth, reads them (quotes are not parsed here,
    hence the wide margin)."""
    depth = 0
    for m in _BRACKET.finditer(text):
        depth = depth + 1 if m.group() in "[{" else max(0, depth - 1)
        if depth > 4 * MAX_YAML_DEPTH:
            line = text.count("\n", 0, m.start()) + 1
            raise ConfigError(
                source,
                [
                    f"line {line}: lists or mappings nest deeper than {MAX_YAML_DEPTH} levels. "
                    "Fix: flatten them"
                ],
            )


def parse_yaml_text(text: str, model: type[M], source: str = "<config>") -> M:
    _check_flow_depth(text, source)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ConfigError(
            source, ["lists or mappings nest too deeply to read. Fix: flatten them"]
        ) from None
    except yaml.reader.ReaderError as e:  # a control character: it has a position, no mark
        line = text.count("\n", 0, e.position) + 1
        char = e.character if isinstance(e.character, str) else chr(e.character)
        raise ConfigError(
            source,
            [f"line {line}: character U+{ord(char):04X} is not allowed in YAML. Fix: remove it"],
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        fix = "" if "Fix:" in problem else ". Fix: check indentation and quoting"
        raise ConfigError(source, [f"{where}not valid YAML ({problem}){fix}"]) from None
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
