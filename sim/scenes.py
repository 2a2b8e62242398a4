"""The project's own MJCF scenes, found by name (the file stem in sim/scenes/)."""

from __future__ import annotations

from pathlib import Path

SCENE_DIR = Path(__file__).resolve().parent / "scenes"

# Files included by the task scenes rather than loaded on their own.
_PARTS = {"so101_arm", "koch_arm"}


def scene_names() -> list[str]:
    """Names of the scenes that load on their own, sorted."""
    return sorted(p.stem for p in SCENE_DIR.glob("*.xml") if p.stem not in _PARTS)


def scene_path(scene: str | Path) -> Path:
    """A scene name ("so101_reach") or an MJCF path -> the MJCF file; FileNotFoundError naming it otherwise."""
    path = Path(scene)
    if path.suffix == ".xml":
        if not path.is_file():
            raise FileNotFoundError(f"scene file not found: {path}")
        return path
    candidate = SCENE_DIR / f"{scene}.xml"
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"unknown scene '{scene}'; known scenes: {', '.join(scene_names())}")
