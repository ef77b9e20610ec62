"""Settings from outside the code: YAML files and KEY=VALUE overrides merged over a profile.

The dataclasses under PipelineConfig stay the one home of every setting and its default;
OmegaConf structured configs built from them do the merging and the type checks (a value is
converted to the field's type or refused), so a key path follows the dataclass tree:
`model.variant`, `train.learning_rate`, `example_gen.slices.size`, `model.filters=[32,64,...]`.

    apply_settings(config, files=["a.yaml", "b.yaml"], sets=["model.encoder=vgg19"])

Files merge in order (later wins), then the overrides. Every error is a SettingsError that names
the key, the value and what is allowed, raised before anything runs.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

from omegaconf import OmegaConf
from omegaconf import errors as oc_errors

from common import storage
from pipeline.configs import PipelineConfig
from pipeline.settings_checks import SettingsError, choice_problems, setting_value

# An override: "key=value" (the value read as YAML, as on a command line), or (key, typed value).
Override = Union[str, Tuple[str, Any]]


def setting_keys(cls=PipelineConfig, prefix: str = "") -> List[str]:
    """Every settable key path of the dataclass tree, in field order ("model.variant", ...)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = prefix + field.name
        if dataclasses.is_dataclass(hints[field.name]):
            keys.extend(setting_keys(hints[field.name], key + "."))
        else:
            keys.append(key)
    return keys


def field_type(key: str, cls=PipelineConfig) -> Any:
    """The annotated type of a leaf key ("train.batch_size" -> int)."""
    head, _, rest = key.partition(".")
    hint = typing.get_type_hints(cls)[head]
    return field_type(rest, hint) if rest else hint


def _unknown(key: str, where: str = "") -> SettingsError:
    close = difflib.get_close_matches(key, setting_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; see docs/settings_reference.md"
    return SettingsError(f"unknown setting {key}{where}{hint}")


def _leaf_keys(node: Any, prefix: str = "") -> List[str]:
    if not isinstance(node, dict) or not node:
        return [prefix[:-1]] if prefix else []
    return [k for name, value in node.items() for k in _leaf_keys(value, f"{prefix}{name}.")]


def _check_keys(data: Dict[str, Any], where: str) -> None:
    """Each key of a mapping of settings must be a setting, or lie inside a dict-valued one
    (model.loss_weights.w_dice). Named in full, which OmegaConf would not do."""
    known = setting_keys()
    for key in _leaf_keys(data):
        parts = key.split(".")
        if any(".".join(parts[:i]) in known for i in range(1, len(parts) + 1)):
            continue
        inside = [k for k in known if k.startswith(key + ".")]
        if inside:
            raise SettingsError(f"{key}{where} is a section, not a setting: set its keys, "
                                f"e.g. {inside[0]}")
        raise _unknown(key, where)


def _nested(key: str, value: Any) -> Dict[str, Any]:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _split(item: Override) -> Tuple[str, Any, Any]:
    """(key, the mapping to merge, the value as given) of an override."""
    if isinstance(item, tuple):
        key, value = item
        return key, _nested(key, value), value
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SettingsError(f"override {item!r}: expected KEY=VALUE, e.g. model.variant=ds")
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={text}"]))
    return key, parsed, text


def _read_file(path: str) -> Dict[str, Any]:
    try:
        text = storage.read_text(path)
    except OSError as e:
        raise SettingsError(f"settings file {path}: cannot read it ({e})") from e
    try:
        data = OmegaConf.to_container(OmegaConf.create(text)) if text.strip() else {}
    except Exception as e:   # YAML syntax errors come in several types
        raise SettingsError(f"settings file {path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path}: expected a mapping of settings, got "
                            f"{type(data).__name__}")
    return data


def _merge(base, data: Dict[str, Any], where: str, key: str = "", given: Any = None):
    """`data` merged into `base`; `key`/`given`: the override's own key and text, for the
    message when OmegaConf cannot say which key failed."""
    _check_keys(data, where)
    try:
        return OmegaConf.merge(base, data)
    except oc_errors.ConfigKeyError as e:   # a key _check_keys let through (e.g. a dict field)
        raise _unknown(e.full_key or key or str(e), where) from e
    except oc_errors.ValidationError as e:
        key = e.full_key or key
        value = given if given is not None else _select(data, key)
        expected = f"expected {_type_name(field_type(key))}: " if key else ""
        reason = (e.msg or str(e)).splitlines()[0]
        raise SettingsError(f"setting {key or '?'}={value!r}{where}: {expected}{reason}") from e


def _select(data: Dict[str, Any], key: str) -> Any:
    """The value an override or file gave for `key`; None where it gave none."""
    try:
        return setting_value(data, key) if key else None
    except (KeyError, AttributeError):
        return None


def _type_name(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        return "a section: set its keys"
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def apply_settings(config: PipelineConfig, files: Iterable[str] = (),
                   sets: Sequence[Override] = ()) -> PipelineConfig:
    """A new PipelineConfig: `config` with each YAML file merged in order, then each override.
    SettingsError on an unknown key, a file that is not a mapping, a value of the wrong type or
    outside its choices."""
    merged = OmegaConf.structured(config)
    for path in files:
        merged = _merge(merged, _read_file(path), f" (in {path})")
    for item in sets:
        key, data, given = _split(item)
        merged = _merge(merged, data, "", key, given)
    # Before the dataclasses are built: some check their own choices, without the key path.
    problems = choice_problems(OmegaConf.to_container(merged))
    if problems:
        raise SettingsError("settings that cannot work:\n  " + "\n  ".join(problems))
    return OmegaConf.to_object(merged)


def to_yaml(config: PipelineConfig) -> str:
    """The effective settings as YAML: what --print_config shows and every run saves; passed back
    with --config it gives the same settings."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_plain(config: PipelineConfig) -> Dict[str, Any]:
    """The settings as plain dicts and lists (JSON-able)."""
    return OmegaConf.to_container(OmegaConf.structured(config))


def plain_to_yaml(settings: Dict[str, Any]) -> str:
    """YAML of (part of) to_plain's result, written as to_yaml writes the whole."""
    return OmegaConf.to_yaml(OmegaConf.create(settings))
