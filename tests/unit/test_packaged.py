"""The shipped recipes and app folder: recipe names resolve, `drasclr app` writes the app and never
overwrites another version's files unasked."""

from __future__ import annotations

from pathlib import Path

import pytest

from drasclr_monailabel.cli.main import main as drasclr
from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.packaged import APP_DIR, app_files, recipe_names, recipe_path
from drasclr_monailabel.ssl.recipe import load_recipe
from drasclr_monailabel.utils.atomic import TMP_PREFIX

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_package_ships_the_repository_recipes_and_app() -> None:
    assert recipe_names() == sorted(path.stem for path in (REPOSITORY / "configs").glob("*.yaml"))
    shipped = {path.relative_to(REPOSITORY / "apps" / "emphysema") for path in (REPOSITORY / "apps" / "emphysema").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert set(app_files()) == shipped and Path("main.py") in shipped


def test_a_recipe_is_found_by_name_or_path_and_an_unknown_one_is_named(tmp_path: Path) -> None:
    assert recipe_path("drasclr_demo").read_text() == (REPOSITORY / "configs" / "drasclr_demo.yaml").read_text()
    assert recipe_path("drasclr_demo.yaml") == recipe_path("drasclr_demo")
    own = tmp_path / "drasclr_demo.yaml"  # a file of the same name wins over the shipped recipe
    own.write_text("moco:\n  queue_size: 64\n")
    assert recipe_path(own) == own
    assert load_recipe(own).moco.queue_size == 64
    assert load_recipe("drasclr_demo").moco.queue_size != 64
    with pytest.raises(ConfigError, match=r"no_such_recipe: .*not a shipped recipe name \(drasclr, drasclr_demo"):
        recipe_path("no_such_recipe")
    with pytest.raises(ConfigError):  # a missing file in a folder is not a name
        recipe_path(tmp_path / "drasclr")


def test_drasclr_app_writes_the_app_and_refuses_to_replace_another_version(tmp_path: Path, capsys) -> None:
    out = tmp_path / "apps" / "emphysema"
    assert drasclr(["app", "--out", str(out)]) == 0
    assert all((out / name).read_bytes() == (APP_DIR / name).read_bytes() for name in app_files())
    printed = capsys.readouterr().out
    assert f"monailabel start_server --app {out}" in printed
    assert f"--log_config {(out / 'logs' / 'logging.json').resolve()}" in printed and (out / "logs" / "logging.json").is_file()
    (out / "model").mkdir()  # what MONAI Label keeps in the app folder stays
    assert drasclr(["app", "--out", str(out)]) == 0  # the same version again: nothing to refuse
    (out / "main.py").write_text("# an older app\n")
    assert drasclr(["app", "--out", str(out)]) == 2
    assert f"{out / 'main.py'}: exists and differs from this version's app; pass --overwrite" in capsys.readouterr().err
    assert (out / "main.py").read_text() == "# an older app\n"
    assert drasclr(["app", "--out", str(out), "--overwrite"]) == 0
    assert (out / "main.py").read_bytes() == (APP_DIR / "main.py").read_bytes() and (out / "model").is_dir()
    assert not [path for path in out.rglob("*") if path.name.startswith(TMP_PREFIX)]
