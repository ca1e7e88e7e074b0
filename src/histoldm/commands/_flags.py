"""argparse options derived from a config model, so that a new config field is one line in one place.

Each top-level field becomes `--field-name` with the field's type, its `description` as help and the
model's default shown after it. Every option defaults to None (= not given), so `resolve_config`
layers defaults <- --config YAML <- given options <- --set. Nested models and free-form dicts are
reached through `--set a.b=...` and `--config`; a command may declare a convenience option for a
nested key (`nested`), still typed and described by that nested field.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from histoldm.config import set_dotted

SCALARS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}
KEYS_DEST = "_config_keys"  # namespace attribute: {dest (= dotted config key): converter or None}


def add_config_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    positional: str | None = None,
    aliases: Mapping[str, str] | None = None,
    nested: Mapping[str, str | tuple[str, FieldInfo]] | None = None,
    converters: Mapping[str, Callable[[str], Any]] | None = None,
) -> list[str]:
    """Add the model's options to `parser`; returns the dotted config keys they set.

    positional: a field taken as the optional positional argument (the command's input).
    aliases: extra option name per field, e.g. {"timeout_s": "--timeout"} keeps an older spelling.
    nested: option -> dotted key of a nested field, e.g. {"--init-from": "model.init_from"}; where the key
        runs through a free-form section (an experiment's stage settings), (key, Model.model_fields["field"])
        gives the stage config field that types and describes it.
    converters: field -> parser of the string typed, applied when the config is resolved, so that its
        UserError reads like any config error (e.g. tile's `--shard K/N`).
    """
    aliases, nested, converters = aliases or {}, nested or {}, converters or {}
    keys: dict[str, Callable[[str], Any] | None] = {}
    for name, field in model.model_fields.items():
        kwargs = _argument(field, converters.get(name))
        if kwargs is None:  # a nested model or a free-form mapping: --set and --config reach it
            continue
        if name == positional:  # a path or name: its type and help, given once, optionally
            parser.add_argument(name, nargs="?", type=kwargs.get("type"), help=kwargs["help"])
        else:
            names = [f"--{name.replace('_', '-')}", *([aliases[name]] if name in aliases else [])]
            parser.add_argument(*names, dest=name, **kwargs)
        keys[name] = converters.get(name)
    for option, target in nested.items():
        key, field = (target, nested_field(model, target)) if isinstance(target, str) else target
        kwargs = _argument(
            field, None, key, show_default=isinstance(target, str)
        )  # a section's default is the experiment's
        if kwargs is None:
            raise TypeError(f"{option}: config key {key} cannot be given as one command-line value")
        kwargs.setdefault("metavar", key.rsplit(".", 1)[-1].upper())
        parser.add_argument(option, dest=key, **kwargs)
        keys[key] = None
    parser.set_defaults(**{KEYS_DEST: keys})
    return list(keys)


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given on the command line, as a nested dict (dotted dests become levels)."""
    out: dict[str, Any] = {}
    for key, convert in getattr(args, KEYS_DEST, {}).items():
        value = getattr(args, key)
        if value is not None:
            set_dotted(out, key, convert(value) if convert else value)
    return out


def nested_field(model: type[BaseModel], key: str) -> FieldInfo:
    """The FieldInfo behind a dotted key such as 'model.init_from'."""
    *parents, leaf = key.split(".")
    for part in parents:
        model = _unwrap_optional(model.model_fields[part].annotation)
    return model.model_fields[leaf]


def _argument(
    field: FieldInfo, converter: Callable[[str], Any] | None, key: str | None = None, show_default: bool = True
) -> dict[str, Any] | None:
    """add_argument keywords for one field, or None when one command-line string cannot express it."""
    kwargs: dict[str, Any] = {"default": None, "help": _help(field, key, show_default)}
    if converter is not None:
        return kwargs | {"type": str}
    tp = _unwrap_optional(field.annotation)
    origin, params = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return kwargs | {"action": argparse.BooleanOptionalAction}
    if origin is Literal and any(isinstance(m, BeforeValidator) for m in field.metadata):
        # the field normalises other spellings first (e.g. bf16 -> bfloat16): the config checks the value
        return kwargs | {"type": type(params[0]), "metavar": "{" + ",".join(map(str, params)) + "}"}
    if origin is Literal:
        return kwargs | {"choices": list(params), "type": type(params[0])}
    if tp in SCALARS:
        return kwargs | {"type": SCALARS[tp]}
    if origin is tuple and params and Ellipsis not in params and all(p in SCALARS for p in params):
        return kwargs | {"nargs": len(params), "type": SCALARS[params[0]]}
    if origin is list and params and params[0] in SCALARS:
        return kwargs | {"nargs": "+", "type": _comma_list(SCALARS[params[0]]), "action": _Flatten}
    if origin is dict and len(params) == 2 and params[0] is str and params[1] in SCALARS:
        return kwargs | {"type": _pairs(SCALARS[params[1]]), "metavar": "KEY=VALUE,..."}
    return None


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _help(field: FieldInfo, key: str | None, show_default: bool = True) -> str:
    parts = [field.description or ""]
    if key:
        parts.append(f"(config key {key})")
    if show_default and not field.is_required():
        default = field.get_default(call_default_factory=True)
        if default is not None:
            parts.append(f"(default: {_show(default)})")
    return " ".join(p for p in parts if p).replace("%", "%%")  # argparse %-formats help strings


def _show(value: Any) -> str:
    """A default written as it would be typed on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def _comma_list(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """'a,b' -> [item('a'), item('b')]: list options take comma- or space-separated values."""

    def parse(text: str) -> list[Any]:
        return [item(part) for part in text.split(",") if part]

    parse.__name__ = getattr(item, "__name__", "value")  # argparse names it in "invalid int value: 'x'"
    return parse


def _pairs(value: Callable[[str], Any]) -> Callable[[str], dict[str, Any]]:
    """'train=0.8,val=0.2' -> {'train': 0.8, 'val': 0.2}."""

    def parse(text: str) -> dict[str, Any]:
        out = {}
        for item in text.split(","):
            name, sep, raw = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(item)
            out[name.strip()] = value(raw)
        return out

    parse.__name__ = "KEY=VALUE"
    return parse


class _Flatten(argparse.Action):
    """`--levels low,mid high` -> ['low', 'mid', 'high'] (each value was split on commas by its type)."""

    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        setattr(namespace, self.dest, [item for value in values for item in value])
