"""Execute the notebook headless, as papermill does; and what the notebook needs to be re-runnable.

Headless runs (`python -m deepfake_detector notebook`):

* The notebook's first code cell is tagged `parameters`. Overrides go into a new cell right after
  it (tagged `injected-parameters`, as papermill does), so the executed copy shows exactly what was
  changed. Each value given on the command line is read with `ast.literal_eval`, and taken as a
  plain string when it is not a Python literal: `-p WEIGHTS imagenet`, `-p WEIGHTS '"imagenet"'`,
  `-p EPOCHS 30` and `-p CROSS_DATASETS '["a", "b"]'` all do what they say.
* Before anything runs, each `-p` is checked (`check_parameters`): its name must be one the
  parameters cell assigns (a typo such as `EPOCH` is refused, listing the names), a Python name
  and no keyword (`import`); its value no infinite or NaN number (`1e999`). `--timeout` must be
  a positive number of seconds.
* A failing cell ends the run with one line (`NotebookCellError`): the cell's index and id, its
  first line, the error (type: message, colour codes stripped) and the path of the partial
  notebook. A cell timeout and a dead kernel are told the same way.
* The executed copy is written after every cell, so a failing cell, a cell timeout or a dead
  kernel leaves the partial notebook, with the error in it, beside the run's artefacts.
* The kernel's working directory is `cwd` (CLI: `--cwd`; default: the project root). Relative
  paths in the parameters (`dataset_raw`, `data`, `outputs/...`) are read from there.

Re-running cells in JupyterLab: the notebook replaces only the splits and runs that it made itself.
It marks each with a small `made_by_notebook.json`; `claim_for_notebook` decides, and stops with one
clear line that names the parameter allowing it (`REPLACE_SPLIT`, `REPLACE_RUN`) for anything else.
"""
from __future__ import annotations

import ast
import difflib
import json
import keyword
import math
import numbers
import os
import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets.config import Config

from .folder_lock import holds_anything, locks_folders
from .manifest import RUN_MANIFEST, record_written

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MARKER = "made_by_notebook.json"


# --- parameters -----------------------------------------------------------------------------

def parse_value(text):
    """A command-line value as papermill reads it: a Python literal when it is one, else the string."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def inject_parameters(notebook, parameters: dict) -> None:
    """Insert `NAME = value` lines after the cell tagged `parameters` (values are Python objects,
    written with repr; strings from a command line go through `parse_value` first)."""
    index = next((i for i, cell in enumerate(notebook.cells)
                  if "parameters" in cell.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise ValueError("The notebook has no cell tagged 'parameters' to override.")
    for name in parameters:
        if not str(name).isidentifier() or keyword.iskeyword(str(name)):
            raise ValueError(f"Parameter name {name!r} is not a Python name (or is a keyword).")
    lines = ["# Parameters injected by `python -m deepfake_detector notebook`"]
    lines += [f"{name} = {value!r}" for name, value in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    notebook.cells.insert(index + 1, cell)


def parameter_names(notebook) -> list[str]:
    """The names the cell tagged `parameters` assigns at its top level, in order."""
    cell = next((c for c in notebook.cells
                 if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ValueError("The notebook has no cell tagged 'parameters' to override.")
    try:
        body = ast.parse(cell.source).body
    except SyntaxError:  # IPython magics in the cell: its lines `NAME = ...` then
        return re.findall(r"(?m)^([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)", cell.source)
    targets = [t for node in body if isinstance(node, (ast.Assign, ast.AnnAssign))
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return list(dict.fromkeys(names))


def non_finite(value):
    """The first infinite or NaN number in `value` (a literal: numbers, containers), or None."""
    if isinstance(value, complex):
        return value if not (math.isfinite(value.real) and math.isfinite(value.imag)) else None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return None if math.isfinite(value) else value
    items = list(value.items()) if isinstance(value, dict) else \
        value if isinstance(value, (list, tuple, set, frozenset)) else []
    for item in items:
        found = non_finite(item)
        if found is not None:
            return found
    return None


def check_parameters(notebook, parameters: dict, where="the notebook") -> dict:
    """{name: value} of the overrides (command-line text read by `parse_value`), or a ValueError
    in one line for a name the parameters cell does not assign (it lists those), a name that is
    no Python name or a keyword, or a value holding an infinite or NaN number. OUTPUT_DIR is
    always accepted: execute_notebook sets it."""
    known = parameter_names(notebook)
    values = {}
    for name, text in parameters.items():
        name = str(name)
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"-p {name}: {name!r} is not a parameter name (a Python name, not a "
                             f"keyword); the parameters cell of {where} sets {', '.join(known)}.")
        if name not in known and name != "OUTPUT_DIR":
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ValueError(f"-p {name}: the parameters cell of {where} sets no {name}; nothing "
                             f"was run.{hint} Its parameters: {', '.join(known)}.")
        value = parse_value(text)
        bad = non_finite(value)
        if bad is not None:
            raise ValueError(f"-p {name} {text}: {bad!r} is not a finite number; give a finite "
                             "value (e.g. 1e-3, 1e6).")
        values[name] = value
    return values


def check_timeout(timeout) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"--timeout must be a positive number of seconds per cell; got "
                         f"{timeout!r}.")


# --- headless execution ---------------------------------------------------------------------

class NotebookCellError(CellExecutionError, ValueError):
    """A cell of a headless run failed: str() is one line (cell, first source line, error, and
    the partial notebook's path); nbclient's whole traceback is the `__cause__`."""


class NotebookCellTimeout(CellTimeoutError):
    """A cell ran past the timeout; str() is one line, as NotebookCellError's."""


class NotebookKernelDied(DeadKernelError, ValueError):
    """The kernel died during a cell; str() is one line, as NotebookCellError's."""


ANSI_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(text, limit: int = 300) -> str:
    """`text` without terminal colour codes, its lines joined, cut at `limit` characters."""
    text = " ".join(ANSI_CODES.sub("", str(text)).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def cell_failure(error: Exception, index: int, cell, executed: Path) -> Exception:
    """The one-line error for `error`, raised by nbclient while it ran cell `index`."""
    first = next((line for line in cell.get("source", "").splitlines() if line.strip()), "")
    where = (f"notebook cell {index} (id {cell.get('id', '?')!r}: `{one_line(first, 80)}`)")
    partial = f"The notebook as executed up to that cell: {executed}"
    if isinstance(error, CellExecutionError):
        ename, evalue = one_line(error.ename, 80), one_line(error.evalue)
        message = f"{where} failed: {ename}: {evalue}. {partial}"
        return NotebookCellError(message, ename, evalue)
    if isinstance(error, CellTimeoutError):
        return NotebookCellTimeout(f"{where} ran past --timeout. {partial}")
    return NotebookKernelDied(f"{where}: the kernel died ({one_line(error, 120)}). {partial}")


def run_cells(client, notebook, executed: Path, passes: int, echo=None) -> None:
    """Every cell, `passes` times, the executed copy saved after each; a failing cell raises
    cell_failure's one-line error. `echo` (e.g. print) gets a line as each section starts: the
    time since the start and the heading above the code cell about to run (`section_lines`)."""
    started = time.monotonic()
    for number in range(passes):
        if echo is not None and passes > 1:
            echo(f"pass {number + 1} of {passes}")
        announce = section_lines(notebook.cells)
        for index, cell in enumerate(notebook.cells):
            if echo is not None and index in announce:
                elapsed = int(time.monotonic() - started)
                echo(f"{elapsed // 60:2d}:{elapsed % 60:02d}  {announce[index]}")
            try:
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
                raise cell_failure(error, index, cell, executed) from error
            finally:
                _write(notebook, executed)


HEADING = re.compile(r"^(#{1,6})\s+(.*?)[\s#]*$")
BOLD_LEAD = re.compile(r"^\*\*(.+?)\*\*")


def cell_heading(cell) -> tuple[int, str] | None:
    """(level, text) of a markdown cell's last heading (outside code blocks), or of its bold
    lead-in ("**Robustness.** The same metrics ...": level 4); None for any other cell."""
    if cell.get("cell_type") != "markdown":
        return None
    found, fenced = None, False
    lines = cell.get("source", "").splitlines()
    for line in lines:
        fenced = fenced != line.lstrip().startswith("```")
        match = None if fenced else HEADING.match(line)
        if match:
            found = (len(match.group(1)), match.group(2))
    if found is None:
        first = next((line for line in lines if line.strip()), "")
        bold = BOLD_LEAD.match(first.strip())
        found = (4, bold.group(1).rstrip(".:")) if bold else None
    if found is None:
        return None
    text = re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", found[1])  # [a link](url): its text
    return found[0], one_line(text.replace("`", "").replace("**", ""), 100)


def section_lines(cells) -> dict[int, str]:
    """{index of a code cell: the line to print before it runs}: the heading that starts its
    section, indented by level, for the first code cell under each heading (a heading with no
    code under it is skipped)."""
    lines, pending = {}, None
    for index, cell in enumerate(cells):
        heading = cell_heading(cell)
        if heading is not None:
            pending = heading
        elif cell.get("cell_type") == "code" and pending is not None:
            lines[index] = "  " * max(0, pending[0] - 2) + pending[1]
            pending = None
    return lines


def _write(notebook, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    nbformat.write(notebook, partial)
    partial.replace(path)  # never a half-written notebook, even if killed while writing


@locks_folders(lambda a: (a["out_dir"],))  # one writer per folder (folder_lock.py)
def execute_notebook(notebook_path="notebooks/deepfake_detector.ipynb", out_dir=None,
                     parameters: dict | None = None, timeout: int = 1800,
                     cwd: str | Path | None = None, rerun: bool = False, echo=None) -> Path:
    """Run every cell with `parameters` (name -> value: a Python object, or command-line text read
    by `parse_value`); returns the output folder, which holds the executed notebook (saved after
    every cell) and every artefact. rerun=True runs every code cell a second time in the same
    kernel afterwards, as a user re-running cells would (the executed copy keeps the second run).
    echo (e.g. print): told where the run goes, then a line as each section starts (run_cells);
    `run_summary(out_dir)` is what to say at the end."""
    notebook_path = Path(notebook_path)
    out_dir = Path(out_dir or f"outputs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and holds_anything(out_dir):  # (its lock aside)
        raise FileExistsError(f"{out_dir} already exists and is not empty; choose another --out.")
    cwd = Path(cwd or PROJECT_ROOT)
    if not cwd.is_dir():
        raise FileNotFoundError(f"Working directory {cwd} does not exist; pass an existing --cwd.")
    check_timeout(timeout)
    notebook = nbformat.read(notebook_path, as_version=4)
    values = check_parameters(notebook, parameters or {}, notebook_path)  # before anything is made
    out_dir.mkdir(parents=True, exist_ok=True)
    inject_parameters(notebook, {"OUTPUT_DIR": str(out_dir.resolve()), **values})
    executed = out_dir / notebook_path.with_suffix(".executed.ipynb").name
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}},
                            config=kernel_manager_config())
    if echo is not None:
        echo(f"Running {notebook_path} headless; the executed copy, saved after every cell: "
             f"{executed}")
    passes = 2 if rerun else 1
    client.reset_execution_trackers()
    try:
        # One line per progress bar in the executed copy (progress.py), not a widget per bar.
        kernel_env = headless_kernel_environment()
        with client.setup_kernel(env=kernel_env):  # as NotebookClient.execute, saving per cell
            info = client.wait_for_reply(client.kc.kernel_info())
            notebook.metadata["language_info"] = info["content"]["language_info"]
            run_cells(client, notebook, executed, passes, echo)
            client.set_widgets_metadata()  # the widgets' last state, so viewers can draw them
            _write(notebook, executed)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        _write(notebook, executed)
        if not isinstance(error, (NotebookCellError, NotebookCellTimeout, NotebookKernelDied)):
            print(f"{type(error).__name__}: the executed notebook up to that cell is {executed}")
        raise
    return out_dir


# --- the closing summary -------------------------------------------------------------------

def _read_json(path: Path, problems: list):
    """The parsed file; None (and a line in `problems`) when it is absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"no {path}")
    except (OSError, ValueError) as error:
        problems.append(f"{path} could not be read ({type(error).__name__}: {one_line(error, 80)})")
    return None


def weights_banner(config: dict) -> list[str]:
    """RANDOM INIT in large letters when the run's backbone was not ImageNet-pretrained, and why."""
    record = config.get("weights_record") or config.get("weights")
    if not isinstance(record, dict) or record.get("pretrained") is not False:
        return []
    note = str(record.get("note", ""))
    if "fell back" not in note:
        return ["RANDOM INIT — NOT IMAGENET-PRETRAINED (chosen: WEIGHTS = 'none'): these numbers "
                "say nothing about a pretrained ResNet-18."]
    cache = re.search(r" into (\S+?)/? \(", note)
    where = cache.group(1) if cache else "the torch cache ($TORCH_HOME/hub/checkpoints)"
    return ["RANDOM INIT — NOT IMAGENET-PRETRAINED: the ImageNet weights could not be downloaded "
            "(no internet?), so the demo fell back to random init; these numbers say nothing "
            "about a pretrained ResNet-18.",
            f"  For ImageNet weights: run once with internet, or put resnet18-f37072fd.pth into "
            f"{where} (config.json, weights_record.note, says more)."]


def run_summary(out_dir) -> str:
    """What a headless run says at its end, read from the files the run wrote (OUT/run:
    config.json, metrics_val.json, audit/audit.json, report.md), not from the notebook's output:
    the RANDOM INIT and SYNTHETIC DATA banners, val accuracy and ROC-AUC with their CIs (rounded),
    whether training converged, the data audit's finding, and where the report is."""
    from .run_dir import AUDIT_DIR, METRICS_VAL_JSON, REPORT_MD, read_run_config
    from .terminal import interval, rounded
    out_dir = Path(out_dir)
    run, problems = out_dir / "run", []
    lines = [f"Summary of {out_dir} (from the run's files):"]
    try:
        config = read_run_config(run)
    except (OSError, ValueError) as error:
        return "\n".join(lines + [f"  no run to summarise: {one_line(error, 200)}",
                                   f"  artefacts    {out_dir}"])
    lines += weights_banner(config)
    synthetic = config.get("synthetic_data")
    if isinstance(synthetic, dict):
        lines.append(f"SYNTHETIC DATA: trained and evaluated on the generated demo set "
                     f"({synthetic.get('raw_dir')}, seed {synthetic.get('seed')}), not on real "
                     "images; put yours in dataset_raw/real and dataset_raw/fake.")
    metrics = _read_json(run / METRICS_VAL_JSON, problems) or {}
    if metrics:
        at_val = metrics.get("val_threshold")
        lines.append(f"  val accuracy {rounded(metrics.get('accuracy'))}"
                     f"{interval(metrics, 'accuracy')} at threshold "
                     f"{metrics.get('threshold', 0.5):g}" + (
                         f"; {rounded(metrics.get('accuracy_at_val_threshold'))} at the "
                         f"threshold chosen on val, {at_val:.3f}" if at_val is not None else ""))
        lines.append(f"  val ROC-AUC  {rounded(metrics.get('roc_auc'))}"
                     f"{interval(metrics, 'roc_auc')}, on {metrics.get('n_images')} images")
    converged = config.get("converged")
    message = str(metrics.get("message") or f"best epoch {config.get('best_epoch')}")
    lines.append(f"  converged    {'?' if converged is None else 'yes' if converged else 'NO'}: "
                 f"{message.split(': ', 1)[-1]}")
    audit = _read_json(run / AUDIT_DIR / "audit.json", problems)
    flags = audit.get("flags") or [] if isinstance(audit, dict) else None
    if flags is not None:
        lines.append("  data audit   " + ("no flags" if not flags else f"{len(flags)} flag(s): "
                     f"{one_line(flags[0], 200)}" + (" ..." if len(flags) > 1 else "")))
    report = run / REPORT_MD
    lines.append(f"  report       {report}" if report.is_file() else f"  report       none ({report})")
    lines += [f"  note: {problem}" for problem in problems]
    lines.append(f"  artefacts    {out_dir}")
    return "\n".join(lines)


# --- what the notebook made itself ---------------------------------------------------------

class NotebookStop(Exception):
    """Stops a notebook cell with one line (IPython shows `_render_traceback_` instead of a
    traceback), for a decision the user has to make, such as replacing someone else's folder."""

    def _render_traceback_(self):
        return [f"STOPPED: {self}"]


def made_by_notebook(folder) -> bool:
    return (Path(folder) / MARKER).is_file()


def kernel_manager_config(server: bool = False) -> Config:
    """How a kernel's sockets are made, the same for the headless runner and for `make lab`'s
    JupyterLab (server=True, read through jupyter_lab_config.py). ipykernel logs "Kernel is
    running over TCP without encryption" whenever its sockets are TCP without CurveZMQ keys (true
    then), so that cause is removed, the message never hidden: CurveZMQ encryption wherever the
    kernelspec declares it (ipykernel >= 7) and pyzmq has it (its wheels do); else, on Linux and
    macOS, IPC sockets, files in Jupyter's runtime folder that only their owner can open (a
    server's kernels put them beside their connection files there; the headless kernel gets a
    fresh name there); else TCP on 127.0.0.1, unencrypted (kernel_transport_note)."""
    import zmq
    from jupyter_client.manager import KernelManager
    if "transport_encryption" in KernelManager.class_trait_names() and zmq.has("curve"):
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    if os.name != "posix" or not zmq.has("ipc"):
        return Config()
    if server:
        return Config({"KernelManager": {"transport": "ipc"}})
    import uuid
    from jupyter_core.paths import jupyter_runtime_dir
    runtime = Path(jupyter_runtime_dir())
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Config({"KernelManager": {"transport": "ipc",
                                     "ip": str(runtime / f"kernel-{uuid.uuid4().hex}-ipc")}})


def kernel_transport_note() -> str | None:
    """One plain line where kernels can have neither CurveZMQ nor IPC sockets (Windows with a
    pyzmq built without CurveZMQ): what ipykernel's warning then means; None elsewhere."""
    if kernel_manager_config(server=True):
        return None
    return ("note: this pyzmq has no CurveZMQ and this system no IPC sockets for Jupyter, so the "
            "kernel talks to JupyterLab over TCP on 127.0.0.1 without encryption (ipykernel warns "
            "about it): other users of this machine could read it. pip's pyzmq wheels have "
            "CurveZMQ.")


def headless_kernel_environment() -> dict:
    """The environment of a headless run's kernel: progress bars as one line each, and no
    MPLBACKEND (Streamlit sets it to Agg on import, so do some shells), which would stop figures
    from showing inline in the executed copy: the kernel picks Jupyter's own backend."""
    return {**{k: v for k, v in os.environ.items() if k != "MPLBACKEND"},
            "DEEPFAKE_DETECTOR_PROGRESS": "log"}


def mark_as_notebooks(folder, what: str, **details) -> Path:
    """Record that the notebook made `folder` (a split or a run), so a re-run may replace it."""
    marker = Path(folder) / MARKER
    marker.write_text(json.dumps({"made_by": "notebooks/deepfake_detector.ipynb", "what": what,
                                  "time": time.strftime("%Y-%m-%d %H:%M:%S"), **details},
                                 indent=2, default=str) + "\n", encoding="utf-8")
    if (Path(folder) / RUN_MANIFEST).is_file():  # a run: the marker is one of the files it wrote
        record_written(folder, [marker])
    return marker


def claim_for_notebook(folder, parameter: str, allowed: bool = False) -> bool:
    """May the notebook write over `folder`? Returns whether something is there to replace.

    Empty or missing: nothing to replace (False). Made by the notebook (marked), or the user set
    `parameter` to True: replace it (True). Anything else: NotebookStop naming `parameter`."""
    folder = Path(folder)
    if not folder.exists() or (folder.is_dir() and not holds_anything(folder)):
        return False
    if made_by_notebook(folder) or allowed:
        return True
    raise NotebookStop(f"{folder} exists and was not made by this notebook; nothing was changed. "
                       f"Set {parameter} = True in the parameters cell to replace it, or choose "
                       "another folder.")
