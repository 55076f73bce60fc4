"""What the package ships besides code: the pretraining recipes and the MONAI Label app folder.

In a checkout ``drasclr_monailabel/recipes`` and ``drasclr_monailabel/emphysema_app`` are links to
the repository's ``configs/`` and ``apps/emphysema/``; a wheel holds copies of their files, so an
installed package finds both without a checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.utils.atomic import write_with

RECIPES_DIR = Path(__file__).parent / "recipes"
APP_DIR = Path(__file__).parent / "emphysema_app"


def app_files() -> list[Path]:
    """The app's source files, relative to :data:`APP_DIR` (``main.py``, ``lib/configs/*.py``)."""
    return sorted(path.relative_to(APP_DIR) for path in APP_DIR.rglob("*.py") if "__pycache__" not in path.parts)


def recipe_names() -> list[str]:
    """Names of the shipped pretraining recipes (``drasclr_demo``, ``drasclr``, ...)."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def recipe_path(recipe: str | Path) -> Path:
    """The recipe YAML that ``recipe`` names: an existing file, else a shipped recipe's name (with or
    without ``.yaml``).

    Raises:
        ConfigError: neither a file nor a shipped recipe (the message lists the shipped ones).
    """
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise ConfigError(str(recipe), f"no such recipe file, and not a shipped recipe name ({', '.join(recipe_names())})")


def write_app(out: Path, overwrite: bool = False) -> list[Path]:
    """Write the MONAI Label emphysema app into ``out`` (``out/main.py``, ``out/lib/...``), as
    ``monailabel apps --download`` writes MONAI's sample apps; returns the files written.

    Each file is written whole (temporary file, then rename); other files in ``out`` (what MONAI
    Label keeps there, such as downloaded tools) stay.

    Raises:
        ConfigError: ``out`` already holds a different app file and ``overwrite`` is false.
    """
    files = app_files()
    if not overwrite:
        for name in files:
            target = out / name
            if target.exists() and target.read_bytes() != (APP_DIR / name).read_bytes():
                raise ConfigError(str(target), "exists and differs from this version's app; pass --overwrite to replace it")
    written = []
    for name in files:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_with(target, lambda tmp, source=APP_DIR / name: shutil.copyfile(source, tmp))
        written.append(target)
    return written
