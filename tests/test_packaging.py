"""Packaging: every source folder is a regular package, so a wheel (setuptools `find`) ships it."""

from pathlib import Path

import vlkit

SOURCE = Path(vlkit.__file__).resolve().parent


def test_every_python_folder_has_an_init():
    folders = {path.parent for path in SOURCE.rglob("*.py")}
    missing = sorted(
        str(f.relative_to(SOURCE)) for f in folders if not (f / "__init__.py").exists()
    )
    assert missing == []


def test_public_training_names_import_from_the_package():
    import vlkit.training as training

    for name in training.__all__:
        assert getattr(training, name) is not None
