"""Typed configs: pydantic models loaded from YAML, with command-line overrides on top.

Unknown keys are rejected (a typo must not silently fall back to a default), and every error is
reported as one line naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from histoldm.config_files import config_file
from histoldm.errors import UserError
from histoldm.fileio import read_text_input

C = TypeVar("C", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    # A key the config once had -> the key that took its job: a file still using the old one is told the new one,
    # where "unknown config key" would leave the user to search the docs.
    renamed_keys: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _name_renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old in sorted(data.keys() & cls.renamed_keys.keys()):
                raise PydanticCustomError(
                    "renamed_key", "{old} is now {new}", {"old": old, "new": cls.renamed_keys[old]}
                )
        return data


def read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(read_text_input(path, "config file"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs (dotted keys for nested fields; values parsed as YAML scalars).

    A key given again replaces its value; a key and a key inside it (`a=1` and `a.b=2`) are an error,
    since either order would silently drop one of them."""
    out: dict[str, Any] = {}
    keys: list[str] = []
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        key = key.strip()
        for other in keys:
            if key.startswith(other + ".") or other.startswith(key + "."):
                outer, inner = sorted((key, other), key=len)
                raise UserError(
                    f"--set {other} and --set {key} overlap ({inner} lies inside {outer}): give one of them"
                )
        keys.append(key)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(out, key, value)
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree['a']['b'] = value for key 'a.b', creating the levels on the way."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _error_loc(error: Any) -> tuple[str | int, ...]:
    """The key an error is about; a renamed key is reported by its model, one level above the key."""
    old = error.get("ctx", {}).get("old") if error["type"] == "renamed_key" else None
    return (*error["loc"], old) if old else tuple(error["loc"])


def _format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in _error_loc(first)) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{loc}'"
    if first["type"] == "renamed_key" and "new" in first.get("ctx", {}):
        return f"{source}: config key '{loc}' is now '{first['ctx']['new']}'"
    return f"{source}: config key '{loc}': {first['msg']}"


def load_config(
    model: type[C],
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> C:
    """Defaults <- YAML file (a path, or a shipped config's name) <- overrides (command-line flags that were
    given, and --set pairs)."""
    path = config_file(path) if path else None
    from_file: dict[str, Any] = read_yaml(path) if path else {}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return model.model_validate(deep_merge(from_file, given))
    except ValidationError as e:
        loc = _error_loc(e.errors()[0])
        source = str(path) if path and not _has_key(given, loc) else "command line"  # blame where the key came from
        raise UserError(_format_validation_error(source, e)) from None


def _has_key(data: dict[str, Any], loc: tuple) -> bool:
    """Whether `loc` (keys, and list positions for items of a list) lies inside `data`."""
    node: Any = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return False
    return True


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def key_error(loc: tuple[str | int, ...], message: str, value: Any = None) -> ValidationError:
    """A validation error on one key, for a check a validator makes beyond the field's type (load_config
    reports it as `config key 'a.b': message`)."""
    return ValidationError.from_exception_data(
        "config",
        [{"type": PydanticCustomError("config_key", "{message}", {"message": message}), "loc": loc, "input": value}],
    )


def nested_error(prefix: tuple[str | int, ...], err: ValidationError, skip: Collection[str] = ()) -> ValidationError:
    """`err`, from validating a nested config by hand, with its keys under `prefix` (so load_config names the
    whole key, e.g. `recipe.train.optim.lrr`), its error types, messages and context kept; errors of the types in
    `skip` left out (e.g. `missing` for the keys an experiment fills in later)."""
    return ValidationError.from_exception_data(
        err.title,
        [
            {
                "type": PydanticCustomError(e["type"], "{message}", {**e.get("ctx", {}), "message": e["msg"]}),
                "loc": (*prefix, *e["loc"]),
                "input": e.get("input"),
            }
            for e in err.errors()
            if e["type"] not in skip
        ],
    )


# One precision vocabulary for every stage's dtype or precision field (resolved by histoldm.devices.resolve_dtype).
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # the spellings of older configs and flags
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", *DTYPE_ALIASES)  # what a command line accepts


def normalise_dtype_name(value: Any) -> Any:
    """`bf16`, `fp16`, `fp32` -> `bfloat16`, `float16`, `float32`; anything else unchanged (the field checks it)."""
    return DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value


# A config's dtype: the old spellings are normalised when the config is read, so outputs record one vocabulary.
DtypeName = Annotated[Literal["auto", "float32", "bfloat16", "float16"], BeforeValidator(normalise_dtype_name)]
# The same without float16, for stages that autocast without a loss scaler (train-vae) or never offered it
# (encode-latents).
AutocastDtypeName = Annotated[Literal["auto", "float32", "bfloat16"], BeforeValidator(normalise_dtype_name)]
# How text encoding and sampling compute (histoldm.devices.sampling_numerics): ours, or PathLDM's to reproduce it.
Numerics = Literal["default", "pathldm"]
