"""Errors about one option's value: the library's message names the parameter, a console script its flag."""
from __future__ import annotations


def option_error(kind: type[Exception], option: str, detail: str, what: str | None = None) -> Exception:
    """kind("<what> <detail>") (what: default the option's name) carrying `option` and `detail`, so that a console
    script can say "--<option> <detail>" instead."""
    exc = kind(f"{what or option.replace('_', ' ')} {detail}")
    exc.option, exc.detail = option, detail
    return exc
