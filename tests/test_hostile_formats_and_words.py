"""Issue 21, sections 5 and 7 and the notebook item of 6: formats allowed by name before any
decoder runs; what was silent said plainly; a failing notebook cell told in one line.

Each test reproduces one case of the issue on tiny data (a few 32 px images, the session's
trained run); the input folders are hashed before and after: only the command's own output
changes. Names new with the issue are imported inside the tests, so that on the code before
it each test fails on its own case."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import struct
import warnings
from pathlib import Path

import nbformat
import pytest
import torch
from PIL import EpsImagePlugin, Image, PsdImagePlugin

from conftest import make_raw_dataset

REFUSAL = "images are not supported; supported: JPEG, PNG, WebP, BMP, TIFF, GIF"


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 5. formats allowed by name


def eps_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "EPS")  # PIL writes EPS without Ghostscript
    return buffer.getvalue()


def psd_bytes(width: int = 8, height: int = 8) -> bytes:
    """A minimal, valid Photoshop file: 3 channels of 8 bits, raw (PIL would decode it)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers
    return header + sections + struct.pack(">H", 0) + bytes(range(64)) * 3


@pytest.fixture
def no_decoder(monkeypatch):
    """Fails the test if the EPS or PSD plugin is ever asked to open, load or run Ghostscript."""
    def reached(*_, **__):
        pytest.fail("a file of an unsupported format reached its PIL plugin")
    for cls in (EpsImagePlugin.EpsImageFile, PsdImagePlugin.PsdImageFile):
        monkeypatch.setattr(cls, "_open", reached)
        monkeypatch.setattr(cls, "load", reached)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", reached)
    # The guard works: PIL's own open, with no formats named, would reach the plugin.
    with pytest.raises(pytest.fail.Exception):
        Image.open(io.BytesIO(eps_bytes()))


def test_eps_and_psd_are_refused_by_name_by_every_opener(tmp_path, no_decoder):
    from deepfake_detector.audit import jpeg_quality_of
    from deepfake_detector.demo_data import load_mask
    from deepfake_detector.images import ImageLoadError, decode_image, frame_count, open_rgb
    for kind, data in (("EPS", eps_bytes()), ("PSD", psd_bytes())):
        for name in (f"x.{kind.lower()}", "renamed.jpg", "renamed.tif"):
            path = tmp_path / kind / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            with pytest.raises(ImageLoadError) as error:
                decode_image(path)
            assert str(error.value) == f"{kind} {REFUSAL}"
            with pytest.raises(ImageLoadError, match=f"{name}: {kind} {REFUSAL}"):
                open_rgb(path)
            assert frame_count(path) == 1 and jpeg_quality_of(path) is None
            with pytest.raises(OSError, match=f"{kind} {REFUSAL}"):
                load_mask(path)
        with pytest.raises(ImageLoadError, match=f"^{kind} {REFUSAL}$"):
            decode_image(io.BytesIO(data))  # an upload's bytes


def test_an_eps_or_psd_upload_is_refused_by_name_in_the_app(no_decoder):
    from deepfake_detector.uploads import decode_upload
    for name, data, kind in (("photo.eps", eps_bytes(), "EPS"), ("layers.png", psd_bytes(), "PSD")):
        result = decode_upload(name, data)
        assert result.error.startswith(f"{name}: {kind} {REFUSAL}")
        assert "damaged" not in result.error and result.image is None


def test_predict_and_split_list_an_eps_or_psd_as_skipped_by_name(tmp_path, trained_run,
                                                                 no_decoder):
    from deepfake_detector.inference import predict_paths
    from deepfake_detector.split import split_dataset
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.eps").write_bytes(eps_bytes())
    (folder / "layers.psd").write_bytes(psd_bytes())
    Image.new("RGB", (32, 32), (90, 120, 150)).save(folder / "good.png")
    files = [folder / "x.eps", folder / "layers.psd", folder / "good.png"]
    before = tree_hashes(folder)
    with pytest.warns(UserWarning, match="2 file\\(s\\) could not be read") as caught:
        rows = predict_paths(trained_run, files, num_workers=0)
    message = "\n".join(str(w.message) for w in caught)
    assert f"x.eps: EPS {REFUSAL}" in message and f"layers.psd: PSD {REFUSAL}" in message
    assert [row["image_id"] for row in rows] == ["good.png"]
    assert tree_hashes(folder) == before

    raw = make_raw_dataset(tmp_path / "raw", n_real=6, n_fake=6)
    (raw / "real" / "drawing.jpg").write_bytes(eps_bytes())  # a name the split lists
    (raw / "fake" / "layers.png").write_bytes(psd_bytes())
    raw_before = tree_hashes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = split_dataset(raw, tmp_path / "data", seed=0)
    excluded = dict(summary.excluded)
    assert excluded["real/drawing.jpg"] == f"EPS {REFUSAL}"
    assert excluded["fake/layers.png"] == f"PSD {REFUSAL}"
    assert tree_hashes(raw) == raw_before


# ------------------------------------------------------------------ 7. said plainly


def tiny_notebook(path: Path, *sources: str) -> Path:
    cells = [nbformat.v4.new_code_cell("EPOCHS = 1\nLR = 3e-3\nWEIGHTS = 'none'",
                                       metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


@pytest.mark.parametrize("arguments, words", [
    (["-p", "EPOCH", "1"], ["sets no EPOCH", "Did you mean EPOCHS?", "EPOCHS, LR, WEIGHTS"]),
    (["-p", "NOT_THERE", "1"], ["sets no NOT_THERE", "EPOCHS, LR, WEIGHTS"]),
    (["-p", "LR", "1e999"], ["-p LR 1e999", "inf is not a finite number"]),
    (["-p", "LR", "[1, -1e999]"], ["-inf is not a finite number"]),
    (["-p", "import", "1"], ["'import' is not a parameter name", "keyword"]),
    (["--timeout", "0"], ["--timeout must be a positive number of seconds", "got 0"]),
    (["--timeout", "-1"], ["--timeout must be a positive number of seconds", "got -1"]),
])
def test_notebook_refuses_bad_parameters_and_timeouts_in_one_line(tmp_path, capsys, arguments,
                                                                  words):
    from deepfake_detector.cli import main
    notebook = tiny_notebook(tmp_path / "nb.ipynb", "print(EPOCHS, LR, WEIGHTS)")
    out = tmp_path / "out"
    code = main(["notebook", "--notebook", str(notebook), "--out", str(out), "--cwd",
                 str(tmp_path), *arguments])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists()  # refused before anything was made or run


def test_notebook_parameter_checks_on_the_parsing_function(tmp_path):
    from deepfake_detector.notebook import check_parameters, non_finite, parameter_names
    notebook = nbformat.read(tiny_notebook(tmp_path / "nb.ipynb"), as_version=4)
    assert parameter_names(notebook) == ["EPOCHS", "LR", "WEIGHTS"]
    assert check_parameters(notebook, {"EPOCHS": "30", "LR": "1e-3", "WEIGHTS": "imagenet",
                                       "OUTPUT_DIR": "x"}) == {
        "EPOCHS": 30, "LR": 1e-3, "WEIGHTS": "imagenet", "OUTPUT_DIR": "x"}
    assert check_parameters(notebook, {"WEIGHTS": "nan"}) == {"WEIGHTS": "nan"}  # a plain string
    assert math.isinf(non_finite({"a": [1, (2, 1e999)]})) and non_finite([1, "inf"]) is None
    for bad in ({"EPOCH": "1"}, {"LR": "-1e999"}, {"LR": "1e999j"}, {"class": "1"},
                {"2x": "1"}, {"LR": float("nan")}):
        with pytest.raises(ValueError) as error:
            check_parameters(notebook, bad)
        assert "\n" not in str(error.value)


def write_checkpoint_field(run: Path, **fields) -> Path:
    path = run / "checkpoint.pt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint.update(fields)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("fields", [{"val_threshold": float("nan")},
                                    {"val_threshold": float("inf")},
                                    {"val_threshold": 1.5}, {"threshold": float("nan")}])
def test_a_checkpoint_with_a_nan_threshold_is_refused_at_load(run_to_change, tmp_path, capsys,
                                                              fields):
    from deepfake_detector.cli import main
    from deepfake_detector.inference import load_run
    path = write_checkpoint_field(run_to_change, **fields)
    name = next(iter(fields))
    with pytest.raises(ValueError) as error:
        load_run(run_to_change, "cpu")
    assert str(path) in str(error.value) and name in str(error.value)
    image = tmp_path / "one.png"
    Image.new("RGB", (32, 32), (90, 120, 150)).save(image)
    assert main(["predict", "--run", str(run_to_change), str(image)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no row labelled "real" by a NaN
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and str(path) in lines[0]


def test_evaluate_that_fails_leaves_no_eval_folder(run_to_change, split_data, capsys,
                                                   monkeypatch):
    from deepfake_detector import plots
    from deepfake_detector.cli import main
    from deepfake_detector.inference import evaluate_run
    run = run_to_change
    data_before = tree_hashes(split_data)
    eval_dir = run / "eval"
    # An invalid config.json: exit 2, and no complete-looking eval/ folder.
    config = (run / "config.json").read_text()
    (run / "config.json").write_text("{ not JSON\n")
    assert main(["evaluate", "--run", str(run), "--data", str(split_data)]) == 2
    assert not list(eval_dir.glob("*/metrics.json")) and not list(eval_dir.glob(".*partial"))
    assert "config.json" in capsys.readouterr().err
    (run / "config.json").write_text(config)

    # A failure after metrics.json and predictions.csv are written: nothing reaches the folder.
    def broken(*_, **__):
        raise OSError("disk full while drawing the figures")
    monkeypatch.setattr(plots, "save_evaluation_figures", broken)
    with pytest.raises(OSError, match="disk full"):
        evaluate_run(run, split_data, out_dir=run / "eval" / "mine", n_bootstrap=10,
                     log=lambda m: None)
    assert not (run / "eval" / "mine").exists()
    assert not eval_dir.exists() or list(eval_dir.iterdir()) == []  # no staging folder left
    monkeypatch.undo()

    # It works afterwards, next to what the user put in the folder.
    (run / "eval" / "mine").mkdir(parents=True)
    (run / "eval" / "mine" / "notes.txt").write_text("mine")
    metrics = evaluate_run(run, split_data, out_dir=run / "eval" / "mine", n_bootstrap=10,
                           log=lambda m: None)
    assert metrics["n_images"] == 16
    names = {p.name for p in (run / "eval" / "mine").iterdir()}
    assert {"metrics.json", "predictions.csv", "notes.txt"} <= names
    assert (run / "eval" / "mine" / "notes.txt").read_text() == "mine"
    assert [p.name for p in eval_dir.iterdir()] == ["mine"]  # no staging folder left
    assert tree_hashes(split_data) == data_before


def many_unreadable(folder: Path, n_empty: int, n_text: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_empty):
        (folder / f"empty {i:04d}.png").write_bytes(b"")
    for i in range(n_text):
        (folder / f"text {i}.jpg").write_text("not an image")
    good = folder / "zz good.png"
    Image.new("RGB", (32, 32), (90, 120, 150)).save(good)
    return sorted(folder.iterdir())


def skipped_warning(caught) -> str:
    found = [str(w.message) for w in caught if "could not be read" in str(w.message)]
    assert len(found) == 1, found
    return found[0]


def test_predict_summarises_many_unreadable_files(tmp_path, trained_run, capsys, monkeypatch):
    from deepfake_detector.cli import main
    folder = tmp_path / "in"
    many_unreadable(folder, 240, 3)
    before = tree_hashes(folder)
    out = tmp_path / "preds.csv"
    with pytest.warns(UserWarning, match="could not be read") as caught:
        assert main(["predict", "--run", str(trained_run), str(folder), "--out", str(out)]) == 0
    err = skipped_warning(caught)
    assert len(err.splitlines()) == 1 + 10 + 1, err  # not 243 lines
    assert "243 file(s) could not be read and were skipped" in err
    assert "by reason: empty file (240), not an image (3)" in err
    assert "empty 0000.png: empty file (0 bytes)" in err and "empty 0010.png" not in err
    listing = tmp_path / "preds.skipped.csv"
    assert f"... and 233 more: the full list is in {listing}" in err
    with open(listing, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 243 and rows[0]["reason"] == "empty file (0 bytes)"
    assert {Path(r["path"]).name for r in rows} == {p.name for p in folder.iterdir()} - {"zz good.png"}
    assert len(out.read_text().splitlines()) == 2

    # To stdout: the list goes to outputs/ under the working directory, and the warning says so.
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.warns(UserWarning, match="could not be read") as caught:
        assert main(["predict", "--run", str(trained_run), str(folder)]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    listed = list((tmp_path / "outputs").glob("predict-skipped-*.csv"))
    assert len(listed) == 1
    assert f"the full list is in {listed[0].relative_to(tmp_path)}" in skipped_warning(caught)
    assert tree_hashes(folder) == before


def test_gradcam_and_evaluate_summarise_many_unreadable_files(tmp_path, trained_run):
    from deepfake_detector.explain import explain_run
    from deepfake_detector.inference import evaluate_run
    plain = make_raw_dataset(tmp_path / "plain", n_real=3, n_fake=3, size=32)
    for label in ("real", "fake"):
        for i in range(7):
            (plain / label / f"empty {i}.png").write_bytes(b"")
    before = tree_hashes(plain)
    with pytest.warns(UserWarning, match=r"14 of 20 image\(s\) could not be read") as caught:
        summary = explain_run(trained_run, [plain], tmp_path / "cam")
    message = skipped_warning(caught)
    assert len(message.splitlines()) == 1 + 10 + 1 and "empty file (14)" in message
    assert f"the full list is in {tmp_path / 'cam' / 'summary.json'}" in message
    assert len(summary["skipped"]) == 14

    with pytest.warns(UserWarning, match=r"14 file\(s\) could not be read") as caught:
        evaluate_run(trained_run, plain, out_dir=tmp_path / "eval", n_bootstrap=10,
                     log=lambda m: None)
    message = "\n".join(str(w.message) for w in caught)
    assert f"the full list is in {tmp_path / 'eval' / 'skipped.csv'}" in message
    assert len((tmp_path / "eval" / "skipped.csv").read_text().splitlines()) == 1 + 14
    assert tree_hashes(plain) == before


# ------------------------------------------------------------------ 6. a failing notebook cell


def test_a_failing_notebook_cell_is_one_line_naming_the_cell_and_the_partial_notebook(
        tmp_path, capsys):
    """One kernel start (~2 s): the one way to see nbclient's real error."""
    from deepfake_detector.cli import main
    notebook = tiny_notebook(tmp_path / "nb.ipynb", "print('before', EPOCHS)",
                             "x = EPOCHS + 1\nraise ValueError('\\x1b[31mbroken\\x1b[0m here')",
                             "print('never')")
    out = tmp_path / "out"
    code = main(["notebook", "--notebook", str(notebook), "--out", str(out), "--cwd",
                 str(tmp_path), "-p", "EPOCHS", "3"])
    captured = capsys.readouterr()
    assert code == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in captured.err and "\x1b" not in captured.err
    line = errors[0]
    executed = out / "nb.executed.ipynb"
    partial = nbformat.read(executed, as_version=4)  # kept, with the error in it
    failing = partial.cells[3]
    assert f"cell 3 (id {failing.id!r}: `x = EPOCHS + 1`)" in line
    assert "ValueError: broken here" in line and str(executed) in line
    assert failing.outputs[0]["ename"] == "ValueError" and partial.cells[4].outputs == []
    assert partial.cells[2].outputs[0]["text"] == "before 3\n"
