"""Command-line options generated from config dataclasses, so each dataclass stays the one place
where a setting is named, typed, documented and defaulted.

- :func:`field_docs`: the attribute docstring under each field (the help text).
- :func:`request_options`: one option per field of a request dataclass (``CollectRequest``).
- :func:`config_options`: one option per field of several algorithms' configs, each ``--help``
  line giving the default that really applies: the dataclass default and every per-suite default.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path

import click


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                docs[a.target.id] = " ".join(str(b.value.value).split())
    return docs


def flag(name: str) -> str:
    """The option a field becomes: ``train_steps`` -> ``--train-steps``, ``behaviour.lr`` -> ``--behaviour.lr``."""
    return "--" + name.replace("_", "-")


def _click_type(annotation, default):
    """The click type of a field from its annotation (``int | None`` -> int) or its default."""
    hints = {int: int, float: float, str: str, Path: click.Path(path_type=Path), bool: bool}
    if isinstance(annotation, str):  # `from __future__ import annotations`
        for name, t in (("Path", Path), ("float", float), ("int", int), ("str", str), ("bool", bool)):
            if name in annotation:
                return hints[t]
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for a in args:
        if a in hints:
            return hints[a]
    return type(default)


def request_options(
    cls, *, skip: Iterable[str] = (), required: Iterable[str] = (), helps: dict[str, str] | None = None
) -> Callable:
    """One option per field of the request dataclass ``cls`` (except ``skip``), its docstring as help
    (or ``helps[name]``, a help made from the library's own lists) and its default as the default; a bool
    field is a flag."""
    docs, skip, required = {**field_docs(cls), **(helps or {})}, set(skip), set(required)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            default = None if f.default is dataclasses.MISSING else f.default
            if isinstance(default, bool):
                fn = click.option(flag(f.name), f.name, is_flag=True, default=default, help=docs.get(f.name, ""))(fn)
                continue
            if _click_type(f.type, default) is bool:  # bool | None: --name/--no-name, unset is None
                off = "--no-" + f.name.replace("_", "-")
                fn = click.option(f"{flag(f.name)}/{off}", f.name, default=None, help=docs.get(f.name, ""))(fn)
                continue
            show = default is not None
            # a required option gets no default at all: click 8.3+ takes an explicit None as a value given
            given_default = {} if f.name in required else {"default": default}
            fn = click.option(
                flag(f.name),
                f.name,
                type=_click_type(f.type, default),
                required=f.name in required,
                show_default=show,
                help=docs.get(f.name, ""),
                **given_default,
            )(fn)
        return fn

    return decorate


def config_options(
    classes: dict[str, type],
    *,
    prefix: str = "",
    skip: Iterable[str] = (),
    suite_defaults: dict[str, dict[str, dict]] | None = None,
) -> Callable:
    """One option per field of any of ``classes`` (name -> config dataclass), default None (the
    config's own default applies). Options reach the command as ``{prefix}{field}`` keywords with
    dots as ``__`` (``behaviour.lr`` -> ``behaviour__lr``).

    A field several configs share gets one option; where their meanings or defaults differ, the help
    lists each one's. ``suite_defaults`` (name -> suite -> field -> value): per-suite defaults, shown
    next to the dataclass default, since they are what a run on that suite gets."""
    skip, suite_defaults = set(skip), suite_defaults or {}
    seen: dict[str, list[tuple[str, dataclasses.Field, str]]] = {}
    for name, cls in classes.items():
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                seen.setdefault(f.name, []).append((name, f, docs.get(f.name, "")))

    def default_text(name: str, f: dataclasses.Field) -> str:
        per_suite = [
            f"{suite}: {table[f.name]}" for suite, table in suite_defaults.get(name, {}).items() if f.name in table
        ]
        return f"default {f.default}" + (f"; {', '.join(per_suite)}" if per_suite else "")

    def decorate(fn):
        for field_name, entries in sorted(seen.items(), reverse=True):
            f = entries[0][1]
            option = prefix + field_name
            variants = {(doc, default_text(n, g)) for n, g, doc in entries}
            if len(variants) == 1:
                scope = "" if len(entries) == len(classes) else f" [{', '.join(n for n, _, _ in entries)}]"
                help_ = f"{entries[0][2]} ({default_text(entries[0][0], f)}){scope}"
            else:
                help_ = " | ".join(f"{n}: {doc} ({default_text(n, g)})" for n, g, doc in entries)
            if isinstance(f.default, bool):
                decl, kw = [f"{flag(option)}/--no-{option.replace('_', '-')}"], {"default": None}
            else:
                decl, kw = [flag(option)], {"type": type(f.default), "default": None}
            fn = click.option(*decl, option.replace(".", "__"), help=help_, **kw)(fn)
        return fn

    return decorate


def given(options: dict, prefix: str = "") -> dict:
    """The options the user set (not None), with ``prefix`` removed, as config keywords."""
    key = prefix.replace(".", "__")
    return {k[len(key) :]: v for k, v in options.items() if k.startswith(key) and v is not None}
