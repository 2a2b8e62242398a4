"""MkDocs hook: the import layout the API reference reads the sources through.

The repository maps its folders into one namespace (robots/ -> forethought.robots, ...; see
pyproject.toml), which the reference's static reader (griffe) cannot follow on its own. When the build
starts, before any plugin reads its configuration, this lays out build/api-src/forethought/ with a link to each folder, so that
`::: forethought.models.gp` finds models/gp.py without importing anything.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "build" / "api-src" / "forethought"
PACKAGES = ("robots", "sim", "models", "controllers", "scripts")


def lay_out_sources() -> Path:
    """build/api-src/forethought/NAME -> the repository's NAME/ for each package; returns build/api-src."""
    SOURCE.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = SOURCE / name
        if link.is_symlink() and link.resolve() == ROOT / name:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / name, target_is_directory=True)
    return SOURCE.parent


def on_startup(command, dirty) -> None:
    # Before any plugin reads its configuration: the reference's handler looks for its paths then.
    lay_out_sources()
