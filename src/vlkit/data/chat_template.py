"""Chat templates: the Jinja programs that turn a list of `{"role", "content"}` messages into a
model's prompt string, rendered as transformers renders them (`utils/chat_template_utils.py`,
5.25).

The environment is transformers': an `ImmutableSandboxedEnvironment` (templates come from the
Hub and are untrusted code) with `trim_blocks` and `lstrip_blocks`, the `loopcontrols`
extension, a `{% generation %}` block (rendered as its body; transformers also records where
it is, for assistant masks, which vlkit does not), `raise_exception`, `strftime_now`, a `tojson`
filter that does not escape HTML, and `dict` / `namespace` globals that refuse underscore names.

Where a checkpoint keeps its template (`read_chat_template`): `chat_template.jinja` (plus named
ones in `additional_chat_templates/*.jinja`), else the `chat_template` key of
`tokenizer_config.json` (a string, or a list of `{"name", "template"}`), else that of
`chat_template.json` (a processor's file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "compile_chat_template",
    "read_chat_template",
    "render_chat_template",
    "select_chat_template",
]


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body (transformers' AssistantTracker
    without the tracking)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter: json.dumps without Jinja's HTML escaping, with its options exposed.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` for templates without exposing the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}"
        )


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's `namespace` refusing underscore names (no route to CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


@lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    """The compiled template, in transformers' sandboxed environment (cached by source)."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.globals["dict"] = _TemplateDict()
    environment.globals["namespace"] = _TemplateNamespace
    return environment.from_string(source)


def render_chat_template(
    chat_template: str,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    add_generation_prompt: bool = False,
    variables: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
    """One prompt string per conversation (transformers' `render_jinja_template`).

    Args:
        chat_template: The Jinja source.
        conversations: Lists of messages (dicts with "role" and "content").
        add_generation_prompt: Append the opener of the assistant's turn.
        variables: Further template variables: the tokenizer's special tokens (`bos_token`,
            `eos_token`, ...) and caller keywords (e.g. Qwen3's `enable_thinking`).
        tools: JSON-schema tool descriptions, for templates that render them.
        documents: Retrieval documents (`{"title", "text"}`), for templates that render them.
    """
    template = compile_chat_template(chat_template)
    return [
        template.render(
            messages=list(conversation),
            tools=None if tools is None else list(tools),
            documents=None if documents is None else list(documents),
            add_generation_prompt=add_generation_prompt,
            **(variables or {}),
        )
        for conversation in conversations
    ]


def read_chat_template(directory: str | Path) -> str | dict[str, str] | None:
    """The chat template(s) a checkpoint directory holds: a string, a {name: template} dict
    when several are named, or None (see the module docstring for where it looks)."""
    directory = Path(directory)
    templates: dict[str, str] = {}
    if (directory / "chat_template.jinja").is_file():
        templates["default"] = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    extra = directory / "additional_chat_templates"
    if extra.is_dir():
        for path in sorted(extra.glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if templates:  # separate files win over tokenizer_config.json, as in transformers
        return templates["default"] if list(templates) == ["default"] else templates
    for name in ("tokenizer_config.json", "chat_template.json"):
        if (directory / name).is_file():
            template = _json(directory / name).get("chat_template")
            if template is not None:
                return _templates(template)
    return None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    return data if isinstance(data, dict) else {}


def _templates(value: Any) -> str | dict[str, str]:
    if isinstance(value, list):  # [{"name": ..., "template": ...}, ...]
        return {item["name"]: item["template"] for item in value}
    return value


def select_chat_template(
    templates: str | Mapping[str, str] | None,
    chat_template: str | None = None,
    tools: Any = None,
    source: str = "the tokenizer",
) -> str:
    """The template to render (transformers' `get_chat_template`): an explicit `chat_template`
    (a name among `templates`, or Jinja source), else "tool_use" when tools are given and
    named so, else "default".

    Raises:
        ValueError: No chat template (one line naming `source` and where one would be).
    """
    if isinstance(templates, Mapping):
        if chat_template is not None:
            return templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ValueError(
            f"{source} has several chat templates ({', '.join(templates)}) and none is named "
            "'default': pass chat_template= with one of the names"
        )
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ValueError(
            f"{source} has no chat template: expected chat_template.jinja, chat_template.json "
            "or a 'chat_template' key in tokenizer_config.json (or pass chat_template=)"
        )
    return templates
