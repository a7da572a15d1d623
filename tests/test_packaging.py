"""Installs like a Python package: declared dependencies and extras, a free distribution name, a
--version, and an import that leaves matplotlib's backend and global style alone."""
from __future__ import annotations

import subprocess
import sys
import tomllib

from deepfake_detector import __version__
from deepfake_detector.notebook import PROJECT_ROOT


def test_pyproject_declares_ranges_extras_and_its_own_name():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "resnet18-deepfake-gradcam"  # "deepfake-detector" on PyPI is another project
    dependencies = {d.split(">")[0].split("=")[0]: d for d in project["dependencies"]}
    assert dependencies["torch"].startswith("torch>=") and dependencies["torchvision"].startswith("torchvision>=")
    assert not [d for d in project["dependencies"] if "==" in d]  # pins live in constraints.txt
    extras = project["optional-dependencies"]
    assert {"jupyterlab", "ipykernel", "ipywidgets", "nbclient"} <= {d.split(">")[0] for d in extras["notebook"]}
    assert any(d.startswith("pytest") for d in extras["test"])
    assert project["scripts"]["deepfake-detector"] == "deepfake_detector.cli:main"
    pins = (PROJECT_ROOT / "constraints.txt").read_text()
    assert "torch==" in pins and "torchvision==" in pins


def test_version_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "deepfake_detector", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith(__version__)


def test_importing_the_package_leaves_matplotlib_alone():
    code = """
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
plt.rcParams["font.size"] = 17
before = dict(plt.rcParams)
import deepfake_detector, deepfake_detector.figures, deepfake_detector.metrics, deepfake_detector.gradcam
import deepfake_detector.plots, deepfake_detector.tables, deepfake_detector.predictions, deepfake_detector.report
import deepfake_detector.train, deepfake_detector.widgets, deepfake_detector.robustness, deepfake_detector.audit
from deepfake_detector.plots import plot_confusion_matrix
fig = plot_confusion_matrix([0, 1, 1], [0.2, 0.7, 0.4])
assert fig.axes[0].title.get_fontsize() == 11, fig.axes[0].title.get_fontsize()  # the paper style, per figure
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
changed = {k for k, v in plt.rcParams.items() if before.get(k) != v}
assert not changed, changed
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_the_command_line_saves_figures_headless(raw_dataset, tmp_path):
    """No display, no backend chosen by anyone: the CLI picks Agg itself and writes its figures."""
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY")}
    code = ("import sys, matplotlib; from deepfake_detector.cli import main; "
            f"code = main(['audit', '--data', {str(raw_dataset)!r}, '--out', {str(tmp_path / 'audit')!r}]); "
            "print(code, matplotlib.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip().splitlines()[-1].lower() == "0 agg", result.stderr
    figures = list((tmp_path / "audit").rglob("*.png"))
    assert figures and all(f.with_suffix(".pdf").is_file() for f in figures)


def test_license_and_citation_files_say_what_pyproject_declares():
    """LICENSE holds the MIT text pyproject names (as an SPDX expression, setuptools >= 77), and
    CITATION.cff (how GitHub, Zenodo and reference managers cite software) has the keys CFF 1.2
    requires, each author a person (family-names, given-names) or an entity (name)."""
    import yaml  # PyYAML: installed with the notebook extra (jupyter's dependency)
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"
    assert pyproject["project"]["license-files"] == ["LICENSE"]
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
    license_text = (PROJECT_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License\n") and "Copyright (c) 2026" in license_text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in license_text
    cff = yaml.safe_load((PROJECT_ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert {"cff-version", "message", "title", "authors"} <= set(cff)
    assert cff["cff-version"] == "1.2.0" and cff["version"] == __version__
    assert cff["license"] == "MIT"
    for person in cff["authors"] + [a for ref in cff["references"] for a in ref["authors"]]:
        assert {"family-names", "given-names"} <= set(person) or "name" in person, person
    cited = " ".join(ref["title"] for ref in cff["references"])
    assert "CIFAKE" in cited and "Tiny Images" in cited  # the data sets the README cites
