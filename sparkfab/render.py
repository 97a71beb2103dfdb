"""Render the Jinja2 templates in templates/ (shell scripts, Spark config, service units).

Undefined variables are errors, and every value that lands in a shell script goes through
the `q` filter (shlex.quote), so a path or URL can never turn into shell syntax.
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # shell and config files, not HTML  # noqa: S701
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render(template: str, **context: Any) -> str:
    """templates/<template>.j2 rendered with `context`."""
    return environment().get_template(f"{template}.j2").render(**context)
