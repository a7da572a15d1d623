"""The command line's parser: built from TrainConfig without torch, scikit-learn or matplotlib, and
the notebook's parameters cell speaks of the same settings with the same defaults."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import fields

import pytest

from deepfake_detector.cli import TRAIN_SETTINGS, build_parser
from deepfake_detector.config import TrainConfig
from deepfake_detector.notebook import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "deepfake_detector.ipynb"
HEAVY = ("torch", "torchvision", "sklearn", "matplotlib")

# The notebook's parameters that mirror a TrainConfig field: NAME in the notebook -> field. By
# convention the name is the field's name in capitals.
NOTEBOOK_SETTINGS = {"DATA_DIR": "data_dir", "WEIGHTS": "weights", "IMG_SIZE": "img_size",
                     "EPOCHS": "epochs", "BATCH_SIZE": "batch_size", "LR": "lr",
                     "PATIENCE": "patience", "SEED": "seed", "AUGMENT": "augment"}
# Where the notebook's default differs on purpose, and what its comment must say instead.
NOTEBOOK_OWN_DEFAULTS = {
    "IMG_SIZE": (None, "224"),  # None: 224, or the synthetic set's own size
    "WEIGHTS": ("imagenet-or-none", "imagenet"),  # Run All offline: the loud RANDOM INIT fallback
}


def command_names() -> list[str]:
    subcommands = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(subcommands.choices)


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in command_names()])
def test_help_imports_no_torch_sklearn_or_matplotlib(argv):
    code = ("import sys; from deepfake_detector.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as stop:\n    assert stop.code == 0\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m deepfake_detector" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_building_the_parser_imports_nothing_heavy():
    code = ("import sys; from deepfake_detector.cli import build_parser; build_parser()\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_train_options_are_trainconfigs_fields_with_its_defaults():
    defaults = TrainConfig()
    args = build_parser().parse_args(["train", "--weights", "none"])
    for name in TRAIN_SETTINGS:
        expected = "none" if name == "weights" else getattr(defaults, name)
        assert getattr(args, name) == expected, name
    # Every field but the augmentation recipe (set from Python) is an option.
    assert set(TRAIN_SETTINGS) == {f.name for f in fields(TrainConfig)} - {"augmentation"}
    assert all(f.metadata["help"] for f in fields(TrainConfig))
    off = build_parser().parse_args(["train", "--weights", "none", "--no-standardize",
                                     "--no-probe", "--no-feature-cache", "--augment"])
    assert (off.standardize, off.probe, off.cache_features, off.augment) == (False, False, False,
                                                                              True)


def notebook_parameters() -> tuple[dict, dict]:
    """The parameters cell's values, and each name's comment."""
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    cells = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    source = "".join(cells[0]["source"])
    values = {node.targets[0].id: ast.literal_eval(node.value)
              for node in ast.parse(source).body if isinstance(node, ast.Assign)}
    comments = {line.split("=")[0].strip(): line.partition("#")[2]
                for line in source.splitlines() if "=" in line}
    return values, comments


def test_the_notebooks_parameters_use_trainconfigs_names_and_defaults():
    values, comments = notebook_parameters()
    defaults = TrainConfig()
    for name, field_name in NOTEBOOK_SETTINGS.items():
        assert name == field_name.upper()
        assert name in values, f"the parameters cell lacks {name}"
        if name in NOTEBOOK_OWN_DEFAULTS:
            own, said = NOTEBOOK_OWN_DEFAULTS[name]
            assert values[name] == own and said == str(getattr(defaults, field_name))
            assert said in comments[name]
        else:
            assert values[name] == getattr(defaults, field_name), name
