"""Where the data lives, and the errors that tell a user how to point the project at it.

One data folder holds one sub-folder per family in its standard release layout
(`<data-dir>/cifar10/cifar-10-batches-py/`, `<data-dir>/svhn/train_32x32.mat`, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from ssl_kd.errors import DataError

DATA_ENV = "SSL_KD_DATA"

LOCAL_FIXES = (
    "pass --data-dir /path/to/data (the folder that holds one sub-folder per dataset, "
    f"e.g. --data-dir ../shared/data) or set the environment variable {DATA_ENV}=/path/to/data"
)
FIXES = f"{LOCAL_FIXES}, or add --download when online"


def resolve_data_dir(arg: str) -> Path:
    """The data folder: `arg` if given, else $SSL_KD_DATA, else ./data."""
    chosen = arg or os.environ.get(DATA_ENV, "") or "data"
    return Path(chosen).expanduser()


def ensure_files(what: str, files: Sequence[Path], download: bool, fetch: Callable[[], object]) -> None:
    """Check that `files` exist; download them with `fetch` first when allowed.

    Raises DataError naming the first missing path (and the fixes) when files are missing
    offline, when the download fails, or when it did not produce the expected files.
    """
    missing = [path for path in files if not path.is_file()]
    if not missing:
        return
    if not download:
        raise DataError(f"{what} not found: looked for {missing[0].absolute()}. To fix: {FIXES}.")
    try:
        fetch()
    except Exception as err:  # network, HTTP and archive errors all mean the same to the user
        raise DataError(
            f"{what} is missing ({missing[0].absolute()}) and the download failed ({type(err).__name__}: {err}); "
            f"this machine may have no network access. To fix: {LOCAL_FIXES} to use a local copy, "
            "or retry --download on a machine with internet access."
        ) from err
    still_missing = [path for path in files if not path.is_file()]
    if still_missing:
        raise DataError(
            f"{what}: the download finished but {still_missing[0].absolute()} is still missing. To fix: {FIXES}."
        )


def corrupt_file_error(path: Path, reason: str) -> DataError:
    """A DataError for a file that exists but cannot be read as the expected format."""
    return DataError(
        f"{path.absolute()} is corrupt or truncated ({reason}). To fix: delete it and rerun with --download, "
        "or replace it with an intact copy of the standard release."
    )
