"""`make demo` and `make lab`: the headless run talks (a line per section, a closing summary read
from the run's files), starts its kernel without the TCP warning, and runs the notebook's model
cell offline on the defaults without a traceback; the two make targets agree; the committed
notebook stays as nbstripout keeps it; the install's metadata is what setuptools wants."""
from __future__ import annotations

import copy
import re
import tomllib

import nbformat

from deepfake_detector.model import DEMO_WEIGHTS
from deepfake_detector.notebook import (PROJECT_ROOT, parameter_names, parse_value, run_summary,
                                        section_lines, weights_banner)

NOTEBOOK = PROJECT_ROOT / "notebooks" / "deepfake_detector.ipynb"
MAKEFILE = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")


def parameter_defaults(notebook) -> dict:
    """{name: default} of the parameters cell, read as the kernel would."""
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    namespace = {}
    exec(cell.source, namespace)  # plain assignments: the cell is the notebook's own
    return {name: namespace[name] for name in parameter_names(notebook)}


def make_target(name: str) -> str:
    """The recipe of `name` in the Makefile (its lines up to the next blank line)."""
    match = re.search(rf"(?ms)^{name}:[^\n]*\n(.*?)(?:\n\n|\Z)", MAKEFILE)
    assert match, f"no target {name} in the Makefile"
    return match.group(1)


def test_headless_run_offline_on_the_defaults_talks_and_sums_up(demo_run, tmp_path, monkeypatch,
                                                                 capfd):
    """`python -m deepfake_detector notebook` on the committed parameters cell (the defaults),
    imports cell and model cell, offline (an empty torch cache, every download refused): no
    traceback, the model cell's RANDOM INIT banner, a line per section, no TCP warning from the
    kernel, and the closing summary, read from the run's files (the shared synthetic demo run,
    copied in as the notebook's run). One kernel, ~3 s: the whole notebook runs in
    test_notebook.py."""
    from deepfake_detector.cli import main
    committed = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]  # parameters, imports, ...
    model_cell = next(c for c in code if "build_model(WEIGHTS" in c.source)
    cells = [nbformat.v4.new_markdown_cell("## Parameters"), code[0], code[1],
             nbformat.v4.new_markdown_cell("## 2. The model: `frozen`\n\nSome words."),
             model_cell,
             nbformat.v4.new_markdown_cell("### Training\n```\n# not a heading\n```"),
             nbformat.v4.new_code_cell("import shutil\nfrom pathlib import Path\n"
                                       f"shutil.copytree({str(demo_run)!r}, Path(OUTPUT_DIR) / 'run')")]
    notebook = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=committed.metadata), notebook)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens: no download, ever
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    out = tmp_path / "out"
    assert main(["notebook", "--notebook", str(notebook), "--out", str(out),
                 "--cwd", str(tmp_path)]) == 0
    said = capfd.readouterr()

    executed = nbformat.read(out / "nb.executed.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    banner = next(o for o in outputs if "text/markdown" in o.get("data", {}))["data"]["text/markdown"]
    assert "RANDOM INIT" in banner and "fell back to random init" in banner
    assert "without encryption" not in said.err and "Traceback" not in said.err + said.out
    lines = said.out.splitlines()
    assert [re.sub(r"^ *\d+:\d\d  ", "", line) for line in lines[1:4]] == [
        "Parameters", "2. The model: frozen", "  Training"]
    summary = said.out[said.out.index("Summary of"):]
    assert "RANDOM INIT — NOT IMAGENET-PRETRAINED (chosen" in summary  # demo_run: weights none
    assert "SYNTHETIC DATA" in summary and "converged    yes" in summary
    assert re.search(r"val accuracy \d\.\d{3} \(95% CI \d\.\d{3}-\d\.\d{3}\)", summary)
    assert re.search(r"val ROC-AUC  \d\.\d{3} \(95% CI \d\.\d{3}-\d\.\d{3}\), on \d+ images", summary)
    assert "data audit   " in summary and f"report       {out / 'run' / 'report.md'}" in summary
    assert not re.search(r"\d\.\d{5}", summary)  # numbers for people are rounded


def test_summary_of_a_fallback_and_of_no_run(tmp_path):
    note = ("ImageNet weights unavailable, demo fell back to random init: Could not load ... To "
            "use ImageNet weights offline, put torchvision's 'resnet18-f37072fd.pth' (46,830,571 "
            "bytes, SHA-256 f37...) into /home/me/.cache/torch/hub/checkpoints/ (set $TORCH_HOME")
    banner = weights_banner({"weights_record": {"pretrained": False, "note": note}})
    assert "could not be downloaded" in banner[0]
    assert "/home/me/.cache/torch/hub/checkpoints " in banner[1]
    assert weights_banner({"weights_record": {"pretrained": True, "note": "torchvision"}}) == []
    summary = run_summary(tmp_path)  # a notebook that trained nothing: said, not a crash
    assert "no run to summarise" in summary and "config.json" in summary


def test_section_lines_follow_the_committed_notebook():
    lines = list(section_lines(nbformat.read(NOTEBOOK, as_version=4).cells).values())
    assert lines[0] == "Parameters" and "1. The data" in lines and "4. Evaluation" in lines
    assert all(line.strip() and "#" not in line and "`" not in line for line in lines)


def test_make_demo_is_run_all_on_the_defaults_that_make_lab_opens():
    """`make demo` and `make lab` cannot disagree: the demo overrides no parameter with a value
    other than the notebook's own default, and that default falls back loudly offline."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    defaults = parameter_defaults(notebook)
    assert defaults["WEIGHTS"] == DEMO_WEIGHTS  # offline: RANDOM INIT banner, not a traceback
    demo, lab = make_target("demo"), make_target("lab")
    overrides = re.findall(r"(?:--parameter|-p) (\w+) ('[^']*'|\S+)", demo)
    assert all(parse_value(value.strip("'")) == defaults[name] for name, value in overrides)
    assert "notebooks/deepfake_detector.ipynb" in lab and "deepfake_detector notebook" in demo


def test_committed_notebook_is_what_nbstripout_keeps_and_git_strips_it():
    """No outputs and no execution counts in the committed notebook, which nbstripout (cell ids
    kept) leaves unchanged; `.gitattributes` sends notebooks through the nbstripout filter that
    `make lab` installs, so JupyterLab's autosaved outputs never reach `git diff` or a commit."""
    from nbstripout import strip_output
    notebook = nbformat.read(NOTEBOOK, as_version=nbformat.NO_CONVERT)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    stripped = strip_output(copy.deepcopy(notebook), keep_output=False, keep_count=False,
                            keep_id=True)
    assert stripped == notebook
    # byte for byte what the filter writes (nbformat's layout: sorted keys), or the first save in
    # JupyterLab becomes a real change (keys reordered) that `git diff` shows and a commit keeps
    text = nbformat.writes(stripped)
    assert NOTEBOOK.read_text(encoding="utf-8") == text + ("" if text.endswith("\n") else "\n")
    attributes = (PROJECT_ROOT / ".gitattributes").read_text(encoding="utf-8").splitlines()
    assert "*.ipynb filter=nbstripout" in attributes and "*.ipynb diff=ipynb" in attributes
    lab = make_target("lab")
    assert "nbstripout --install --attributes .gitattributes" in lab and "--keep-id" in lab
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(d.startswith("nbstripout>=") for d in project["project"]["optional-dependencies"]["notebook"])
    assert "nbstripout==" in (PROJECT_ROOT / "constraints.txt").read_text(encoding="utf-8")
    # the license as an SPDX string (a TOML table is deprecated, and warned about at install)
    assert isinstance(project["project"]["license"], str)
    assert "setuptools>=77" in project["build-system"]["requires"]
