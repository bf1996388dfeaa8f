"""Checks of a command's options before it does any work, each a one-line :class:`HdmapError` naming
the key: output folders, the sliding window, and the arguments of the objects a config instantiates
(trainer, callbacks, loggers)."""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import os
import pathlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hdmap_seg.errors import HdmapError


def check_output_dir(path: str | os.PathLike, key: str) -> None:
    """``path`` can become a folder: no part of it is a file, and its nearest existing folder is writable."""
    path = Path(path)
    for probe in (path, *path.parents):
        if not os.path.lexists(probe):
            continue
        if not probe.is_dir():
            where = "it" if probe == path else str(probe)
            raise HdmapError(f"{key}={path}: {where} is a file, not a folder; choose another {key}")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise HdmapError(f"{key}={path}: cannot write in {probe} (permission denied)")
        return


def _int_pair(value: Any, key: str) -> tuple[int, int]:
    items = (
        list(value) if isinstance(value, collections.abc.Sequence) and not isinstance(value, str) else None
    )
    if (
        items is None
        or len(items) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items)
    ):
        raise HdmapError(f"{key}={_show(value)}: expected [height, width], two whole numbers of pixels > 0")
    return items[0], items[1]


def check_window(window: Any, stride: Any, size_divisor: int = 1) -> None:
    """The sliding-window options of inference and evaluation (``window``, ``stride``).

    ``size_divisor`` is the model's (``Segmenter.size_divisor``, the exported model's metadata): a
    window side below it is mostly padding. Stride defaults to 2/3 of the window.
    """
    if window is None:
        return
    wh, ww = _int_pair(window, "window")
    if min(wh, ww) < size_divisor:
        raise HdmapError(
            f"window={[wh, ww]}: each side must be at least the model's size divisor {size_divisor} "
            f"(a multiple of it, e.g. window=[{16 * size_divisor}, {16 * size_divisor}])"
        )
    if stride is None:
        default = [wh * 2 // 3, ww * 2 // 3]
        if min(default) < 1:
            raise HdmapError(
                f"window={[wh, ww]}: too small for a sliding window (its default stride, 2/3 of it, "
                f"is {default}); use a window of the size the model was trained at, e.g. window=[512, 512]"
            )
    else:
        _int_pair(stride, "stride")


# Arguments of configured objects ---------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_SCALARS = (bool, int, float, str, type(None))


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union annotation (itself otherwise)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _kind(annotation: Any) -> str | None:
    """What a config value can be checked against: a scalar type, Literal, sequence, mapping, path;
    None for anything else (a class the target may convert a plain value to; we do not judge)."""
    if annotation in _SCALARS or annotation is None:
        return "scalar"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "literal"
    target = origin or annotation
    if not isinstance(target, type):
        return None
    if issubclass(target, (os.PathLike, pathlib.PurePath)):
        return "path"
    if issubclass(target, str):
        return None
    if issubclass(target, Mapping):
        return "mapping"
    if issubclass(target, (collections.abc.Sequence, collections.abc.Set)):
        return "sequence"
    return None


def _accepts(member: Any, value: Any) -> bool:
    kind = _kind(member)
    if member is None or member is type(None):
        return value is None
    if kind == "scalar":
        if member is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if member is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, member)
    if kind == "literal":
        return any(type(value) is type(a) and value == a for a in typing.get_args(member))
    if kind == "path":
        return isinstance(value, str | os.PathLike)
    if kind == "mapping":
        return isinstance(value, Mapping)
    if kind == "sequence":
        return isinstance(value, list | tuple)
    return True


def _describe(members: list[Any]) -> str:
    parts: list[str] = []
    literals = any(typing.get_origin(m) is typing.Literal for m in members)
    for m in members:
        if m is None or m is type(None):
            parts.append("None")
        elif typing.get_origin(m) is typing.Literal:
            parts += [repr(a) for a in typing.get_args(m)]
        elif _kind(m) == "path":
            parts.append("a path")
        else:
            parts.append(getattr(typing.get_origin(m) or m, "__name__", str(m)))
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
    return f"one of {listed}" if literals else listed


def _signature(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]] | None:
    try:
        params = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # forward references that do not resolve: check names only
        hints = {}
    return params, hints


def check_arguments(node: Mapping, key: str) -> None:
    """The keys of a ``_target_`` config ``node`` (resolved, plain containers) against its target's
    signature: each must be an argument, and a value of a plain type (int, str, a Literal, ...) must
    be of the annotated type. ``key`` is the node's place in the config (``trainer``,
    ``callbacks.model_checkpoint``). Values that Hydra instantiates (nested ``_target_``) and arguments
    of other annotated types are left to the target."""
    target_name = node.get("_target_")
    if not isinstance(target_name, str):
        return
    from hydra.utils import get_object

    try:
        target = get_object(target_name)
    except Exception:  # Hydra reports a target that does not import, in its own words
        return
    signature = _signature(target)
    if signature is None:
        return
    params, hints = signature
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]
    for name, value in node.items():
        if name.startswith("_"):  # _target_, _convert_, _partial_, _recursive_, _args_
            continue
        if name not in params or name == "self":
            if takes_any:
                continue
            close = difflib.get_close_matches(name, named, n=1)
            hint = f"; did you mean {key}.{close[0]}?" if close else ""
            raise HdmapError(f"{key}.{name}={_show(value)}: {target_name} has no argument {name!r}{hint}")
        if isinstance(value, Mapping) and "_target_" in value:
            check_arguments(value, f"{key}.{name}")
            continue
        annotation = hints.get(name, params[name].annotation)
        if annotation is inspect.Parameter.empty or isinstance(annotation, str):
            continue
        members = _members(annotation)
        if any(_kind(m) is None and m is not None and m is not type(None) for m in members):
            continue  # an alternative we cannot judge from a config value
        if not any(_accepts(m, value) for m in members):
            raise HdmapError(f"{key}.{name}={_show(value)}: {target_name} expects {_describe(members)}")


def check_instantiated_groups(cfg: Any, groups: tuple[str, ...] = ("trainer", "callbacks", "logger")) -> None:
    """:func:`check_arguments` of ``cfg.trainer`` and of each entry of ``cfg.callbacks`` and ``cfg.logger``
    (those a command has), before anything is instantiated."""
    from omegaconf import OmegaConf

    for group in groups:
        node = cfg.get(group) if hasattr(cfg, "get") else None
        if node is None:
            continue
        try:
            resolved = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except Exception:  # an interpolation that does not resolve: the command reports it when it gets there
            continue
        if not isinstance(resolved, Mapping):
            continue
        if "_target_" in resolved:
            check_arguments(resolved, group)
        else:  # a group of named objects (callbacks, logger); null entries are switched off
            for name, sub in resolved.items():
                if isinstance(sub, Mapping):
                    check_arguments(sub, f"{group}.{name}")


def instantiate_configured(node: Any, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` of an object the user configures (trainer, a callback,
    a logger): a TypeError / ValueError / Lightning MisconfigurationException raised while building it
    is the configuration's fault and becomes a one-line :class:`HdmapError` naming ``key``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    user_errors = (TypeError, ValueError, MisconfigurationException)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if not isinstance(cause, user_errors):
            raise
        target = node.get("_target_") if hasattr(node, "get") else None
        raise HdmapError(
            f"{key}: {target} does not accept the configured options: {type(cause).__name__}: "
            + " ".join(str(cause).split())
        ) from None
