"""Where iapas finds its weights when not told: `$IAPAS_WEIGHTS`, else ./weights when it holds files, else a per-user folder.

Every command's `--weights` (and `Config.weights_dir`) defaults to this folder, and `iapas weights download`,
`weights make-demo` and `make demo` write to it, so weights fetched once are found from any folder.
"""
from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_ENV = "IAPAS_WEIGHTS"
LOCAL_WEIGHTS = "weights"  # beside the current folder: a checkout's weights/ (its README.md alone does not count)


def user_weights_dir() -> Path:
    """The per-user data folder's weights/ (e.g. ~/.local/share/iapas/weights on Linux)."""
    import platformdirs

    return platformdirs.user_data_path("iapas", appauthor=False) / "weights"


def holds_files(folder: Path) -> bool:
    """Whether `folder` holds anything but a README and hidden files (a fresh checkout's weights/ does not)."""
    try:
        return any(not entry.name.startswith(".") and entry.name.lower() != "readme.md" for entry in folder.iterdir())
    except OSError:  # absent, a file, or unreadable
        return False


def weights_search() -> list[tuple[Path | None, str]]:
    """Each place the default weights folder is looked for, in order, with what was found there; the last one is used."""
    chosen = os.environ.get(WEIGHTS_ENV, "").strip()
    if chosen:
        return [(Path(chosen).expanduser(), f"${WEIGHTS_ENV}")]
    try:
        local = Path.cwd() / LOCAL_WEIGHTS
    except OSError:  # the current folder was deleted under us: there is no ./weights
        local = Path(LOCAL_WEIGHTS)
    if holds_files(local):
        return [(None, f"${WEIGHTS_ENV} not set"), (local, "./weights")]
    return [(None, f"${WEIGHTS_ENV} not set"), (local, "./weights: no files"), (user_weights_dir(), "the per-user folder")]


def default_weights_dir() -> Path:
    """The weights folder used when none is given: `$IAPAS_WEIGHTS`, else ./weights when it holds files, else the user folder."""
    return weights_search()[-1][0]  # type: ignore[return-value]


def weights_search_note(weights_dir: str | Path) -> str:
    """For an error about `weights_dir`: every place looked at, when it is the default folder; "" for a chosen one."""
    if Path(weights_dir).expanduser().absolute() != default_weights_dir().absolute():
        return ""
    places = "; ".join(f"{what} ({path})" if path else what for path, what in weights_search())
    return f" (--weights not given; looked at: {places}; set --weights or ${WEIGHTS_ENV} to choose)"
