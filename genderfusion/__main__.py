"""`python -m genderfusion <command> …` runs any of the package's console scripts (read from its metadata)."""
from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, distribution


def commands() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in distribution("genderfusion").entry_points if ep.group == "console_scripts"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    known = commands()
    if argv[:1] == ["--version"]:
        from genderfusion import __version__

        print(f"genderfusion {__version__}")
        return
    if not argv or argv[0] not in known:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; the commands: {', '.join(sorted(known))}", file=sys.stderr)
        print(f"usage: python -m genderfusion {{{','.join(sorted(known))}}} [options] | --version\n"
              "       python -m genderfusion COMMAND --help", file=sys.stderr)
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    known[argv[0]].load()(argv[1:])


if __name__ == "__main__":
    main()
