"""The module maps (README's Layout section, the package docstring) name exactly the package's modules."""

from __future__ import annotations

import re
from pathlib import Path

import embeddinggemma

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "embeddinggemma"


def _entries(directory: Path) -> set[str]:
    """Modules as `name.py` and subpackages / data folders as `name/`."""
    return {
        p.name + ("/" if p.is_dir() else "")
        for p in directory.iterdir()
        if p.name != "__init__.py" and p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")
    }


def test_readme_layout_lists_every_module() -> None:
    layout = (ROOT / "README.md").read_text(encoding="utf-8").split("## Layout", 1)[1].split("```")[1]
    listed = set(re.findall(r"^embeddinggemma/(\S+)", layout, re.M))
    assert listed == _entries(PACKAGE)
    for sub in ("checkpoint", "train"):  # each module of a subpackage is named on its lines
        text = " ".join(layout.split(f"embeddinggemma/{sub}/", 1)[1].split("\nembeddinggemma/", 1)[0].split())
        for module in _entries(PACKAGE / sub):
            assert module.removesuffix(".py") in text, f"{sub}/{module} is not in the README layout"


def test_package_docstring_maps_every_module() -> None:
    names = set(re.findall(r"^  (\w+)/? ", embeddinggemma.__doc__, re.M))
    assert names == {e.removesuffix(".py").removesuffix("/") for e in _entries(PACKAGE)} | {"configs"}
