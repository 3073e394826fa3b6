"""``streamer check-config`` and ``streamer config-reference``."""

from __future__ import annotations

import argparse

from streamer.logsetup import hide_secrets
from streamer.settings import (
    SECTIONS,
    Settings,
    field_docs,
    is_secret,
    load_settings,
    secret_values,
)


def add_check_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``check-config``."""
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", nargs="?", help="TOML config file")
    check.add_argument("--show", action="store_true", help="print the effective settings")
    check.set_defaults(handler=cmd_check_config)


def add_config_reference(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config-reference``."""
    ref = sub.add_parser(
        "config-reference", help="print every option with its type, default and doc"
    )
    ref.add_argument("--markdown", action="store_true")
    ref.set_defaults(handler=cmd_config_reference)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config and its model without starting anything."""
    from streamer.core.models import load_configured  # noqa: PLC0415

    settings = load_settings(args.file)
    hide_secrets(*secret_values(settings))
    model = load_configured(settings)
    print(
        f"{args.file or '(defaults and environment)'}: ok; model {model.name} {model.version}, "
        f"features {', '.join(model.spec.names)}"
    )
    if args.show:
        print(_describe(settings))
    return 0


def _describe(settings: Settings) -> str:
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        values = getattr(settings, section)
        for name, _type, _default, _doc in field_docs(SECTIONS[section]):
            value = getattr(values, name)
            shown = "***" if is_secret(f"{section}.{name}") and value else repr(value)
            lines.append(f"{name} = {shown}")
    return "\n".join(lines)


def cmd_config_reference(args: argparse.Namespace) -> int:
    """Print the option reference."""
    for section, cls in SECTIONS.items():
        if args.markdown:
            print(f"\n**[{section}]**\n\n| key | type | default | meaning |\n|---|---|---|---|")
        else:
            print(f"[{section}]")
        for name, type_name, default, doc in field_docs(cls):
            if args.markdown:
                print(f"| `{name}` | {type_name} | `{default!r}` | {doc} |")
            else:
                print(f"  {name} ({type_name}, default {default!r}): {doc}")
    return 0
