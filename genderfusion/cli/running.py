"""What every console script shares: its parser, and one clear line (exit 2) for a user error instead of a
traceback."""
from __future__ import annotations

import argparse
import logging
import sys

from genderfusion.files.paths import printable
from genderfusion.extract.errors import DataError, UnknownBackboneError, WeightsError, WorkspaceError

QUIET_LOGGERS = ("faiss", "matplotlib", "PIL", "h5py")
USER_ERRORS = (ImportError, DataError, WorkspaceError, WeightsError, UnknownBackboneError, ValueError, OSError)


# how library messages name a parameter (`skip_bad=True`), and the console scripts' flag for it
FLAGS = {"skip_bad=True": "--skip-bad", "new_folds=True": "--new-folds", "overwrite=True": "--overwrite",
         "group_duplicates=False": "--no-group-duplicates", "force=True": "--force", "frozen=True": "--frozen",
         "weights=": "--weights "}


def flags(text: str) -> str:
    """A library message with the parameters it names given as the console scripts' flags."""
    for phrase, flag in FLAGS.items():
        text = text.replace(phrase, flag)
    return text


def message(exc: BaseException) -> str:
    """An error's message for the console: one about an option's value (its `option` and `detail`) names the option
    by its flag, and so do the parameters it names."""
    option = getattr(exc, "option", None)
    return flags(f"--{option.replace('_', '-')} {exc.detail}" if option else str(exc))


def run_cli(main, interrupted: str) -> None:
    """Run a CLI body; user errors print one clear line and exit 2 instead of a traceback; Ctrl-C prints
    `interrupted` (what is kept) and exits 130."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in QUIET_LOGGERS:  # libraries' loader notes are not the user's business
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        main()
    except USER_ERRORS as exc:
        print(f"error: {printable(message(exc))}", file=sys.stderr)  # a file name may hold bytes that are not UTF-8
        sys.exit(2)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A console script's parser, naming the distribution and answering --version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("genderfusion")
    except PackageNotFoundError:
        v = "unknown (not installed)"
    p = argparse.ArgumentParser(prog=prog, description=f"{description} (genderfusion)")
    p.add_argument("--version", action="version", version=f"genderfusion {v}")
    return p
