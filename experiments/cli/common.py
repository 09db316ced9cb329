"""What the CLI modules share: exit codes, the one-line usage error and its parser."""

from __future__ import annotations

import argparse
import errno

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_IO = 74  # sysexits EX_IOERR: disk full, no permission, read-only file system
IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``crossover train: error: ... (see --help)``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
