"""Command options built from a config dataclass: one place per default, shown by `--help`.

`config_options(Config)` turns every field of a config dataclass into a `--field-name` option whose help
is the field's docstring (its first sentence) with `[default: ...]` read from the dataclass itself, adds
`--config FILE` (JSON or YAML; flags override the file), and hands the command one `overrides` dict with
what the file and the flags set. Nothing here retypes a default.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import textwrap
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ._app import fail


def field_docs(cls: type) -> dict[str, str]:
    """{field name: docstring} from the string literal that follows each field in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                    docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _first_sentence(doc: str) -> str:
    """Up to the first full stop outside parentheses that is followed by a capital (so "eq. 3" stays)."""
    text, depth = " ".join(doc.split()), 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "." and depth == 0 and text[i + 1 : i + 2] == " " and text[i + 2 : i + 3].isupper():
            return text[: i + 1]
    return text


def _default(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _base_type(annotation: Any) -> Any:
    """int/float/str/bool, or list for sequences; Optional[...] unwrapped."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin in (list, tuple) or annotation in (list, tuple):
        return list
    return annotation if annotation in (int, float, str, bool) else str


def _item_type(annotation: Any) -> type:
    """The element type of list[X] / tuple[X, ...] (Optional unwrapped): int, float or str."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _item_type(args[0]) if len(args) == 1 else str
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return args[0] if args and args[0] in (int, float, str) else str


def _parse_list(text: str, item: type, flag: str) -> list:
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(item(part))
        except ValueError:
            kind = "an integer" if item is int else "a number"
            fail(f"{flag} must be comma-separated values such as 5,10,25, not {text!r} ({part!r} is not {kind}).")
    return values


def load_config_file(path: str, cls: type) -> dict[str, Any]:
    """The fields a JSON or YAML file sets; unknown keys and unreadable files are refused, naming the file."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        fail(f"--config {path}: cannot read it ({exc.strerror or exc}); give a JSON or YAML file of {cls.__name__} fields.")
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # any parser error: one line naming the file
        fail(f"--config {path}: not valid {'YAML' if file.suffix.lower() in ('.yaml', '.yml') else 'JSON'} ({str(exc).splitlines()[0]}).")
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a run's own config.json / results.json holds the resolved config under "config"
    if not isinstance(data, dict):
        fail(f"--config {path}: expected a mapping of {cls.__name__} fields, found {type(data).__name__}.")
    names = {f.name for f in fields(cls)}
    removed = [name for name in data if name in getattr(cls, "removed_options", {})]
    if removed:
        fail(f"--config {path}: " + removed_message(cls, removed))
    unknown = sorted(set(data) - names)
    if unknown:
        fail(f"--config {path}: unknown field(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(sorted(names))}.")
    return data


def removed_message(cls: type, names: list[str]) -> str:
    """One line naming options that `cls` no longer has and what replaced each (`cls.removed_options`)."""
    return ("; ".join(f"{name} was removed ({cls.removed_options[name]})" for name in names)
            + "; drop it (docs/decisions.md, 'Removed options').")


def config_options(cls: type, *, exclude: tuple[str, ...] = (), flags: dict[str, str] | None = None) -> Callable:
    """Decorate `command(..., overrides: dict)`: the command gains one option per field of `cls` (minus
    `exclude`) and `--config FILE`; `overrides` receives the file's fields updated by the flags given."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    flags = flags or {}
    specs = []
    for f in fields(cls):
        if f.name in exclude:
            continue
        kind = _base_type(hints[f.name])
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        default = _default(f)
        help_text = f"{_first_sentence(docs.get(f.name, ''))}  \\[default: {_show(default)}]"  # \\[: not rich markup
        if kind is bool:
            option = typer.Option(f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
            ann = Annotated[Optional[bool], option]
        elif kind is list:
            item = _item_type(hints[f.name])
            option = typer.Option(flag, help=help_text + " (comma-separated" + ("; repeatable)" if item is str else ")"), show_default=False)
            ann = Annotated[Optional[typing.List[str]], option] if item is str else Annotated[Optional[str], option]
        else:
            option = typer.Option(flag, help=help_text, show_default=False)
            ann = Annotated[Optional[kind], option]
            item = None
        specs.append((f.name, flag, kind, item if kind is list else None, ann))

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        resolved = typing.get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=resolved.get(p.name, p.annotation)) for p in signature.parameters.values() if p.name != "overrides"]
        taken = {p.name for p in own}
        config_param = inspect.Parameter(
            "config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[Optional[str], typer.Option("--config", help=f"JSON or YAML file of {cls.__name__} fields; flags given here override it.")],
        )
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)
                 for name, _, _, _, ann in specs if name not in taken]
        taken_flags = {flag for _, flag, _, _, _ in specs}  # a removed name whose flag another field now uses is that field's
        removed = {name: why for name, why in getattr(cls, "removed_options", {}).items()
                   if "--" + name.replace("_", "-") not in taken_flags}
        extra += [inspect.Parameter(f"removed_{name}", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=Annotated[Optional[str], typer.Option("--" + name.replace("_", "-"), hidden=True)])
                  for name in removed]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = [name for name in removed if kwargs.pop(f"removed_{name}", None) is not None]
            if given:
                fail(removed_message(cls, given))
            config_file = kwargs.pop("config_file", None)
            overrides = load_config_file(config_file, cls) if config_file else {}
            for name, flag, kind, item, _ in specs:
                if name in taken:
                    continue
                value = kwargs.pop(name, None)
                if value is None:
                    continue
                if kind is list and item is str:
                    overrides[name] = [p.strip() for v in value for p in str(v).split(",") if p.strip()]
                else:
                    overrides[name] = _parse_list(value, item, flag) if kind is list else value
            return command(overrides=overrides, **kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else p for p in own]
        wrapper.__signature__ = signature.replace(parameters=params + [config_param] + extra)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}  # type: ignore[attr-defined]
        del wrapper.__wrapped__  # typer must read the new signature, not the command's
        return wrapper

    return decorate
