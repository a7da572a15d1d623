"""The data audit: it finds a constructed shortcut, stays quiet on a fair data set, finds
duplicates across splits and classes, reads JPEG quality right, and never refuses."""
from __future__ import annotations

import io
import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import smooth_noise
from deepfake_detector.audit import AuditWarning, audit_split, estimate_jpeg_quality
from deepfake_detector.cli import main


def write(folder, n, seed, fmt="PNG", size=32, quality=90, mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = Image.fromarray(np.clip(smooth_noise(rng, size), 0, 255).astype(np.uint8)).convert(mode)
        suffix = "jpg" if fmt == "JPEG" else fmt.lower()
        image.save(folder / f"{i}.{suffix}", fmt, **({"quality": quality} if fmt == "JPEG" else {}))


def fair_dataset(root, n=40, seed=1):
    """Real and fake drawn from the same distribution, saved the same way: nothing to find."""
    write(root / "real", n, seed=seed, fmt="JPEG")
    write(root / "fake", n, seed=seed + 1, fmt="JPEG")
    return root


def test_jpeg_quality_is_read_from_the_quantisation_tables():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    for quality in (30, 50, 75, 90, 95, 100):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        with Image.open(buffer) as decoded:
            assert estimate_jpeg_quality(decoded.quantization) == quality
    assert estimate_jpeg_quality({}) is None


def test_a_fair_dataset_raises_no_flag(tmp_path):
    data = fair_dataset(tmp_path / "fair")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AuditWarning)
        findings = audit_split(data, out_dir=tmp_path / "audit")
    assert findings["flags"] == []
    assert findings["counts"] == {"all": {"real": 40, "fake": 40}}
    assert findings["properties"]["jpeg_quality"] == {"real": {"90": 40}, "fake": {"90": 40}}
    assert findings["separability"]["best"] < 0.8
    for path in ("audit.json", "audit.md", "tables/audit_properties.md",
                 "tables/audit_properties.csv", "tables/audit_properties.tex",
                 "figures/audit_file_size.png", "figures/audit_file_size.pdf"):
        assert (tmp_path / "audit" / path).is_file(), path
    assert "No shortcut found" in (tmp_path / "audit" / "audit.md").read_text()


def test_png_reals_and_jpeg_fakes_are_a_shortcut(tmp_path):
    write(tmp_path / "d" / "real", 30, seed=1, fmt="PNG")
    write(tmp_path / "d" / "fake", 30, seed=2, fmt="JPEG")
    with pytest.warns(AuditWarning, match="format PNG: 100% of real images but 0% of fake"):
        findings = audit_split(tmp_path / "d", out_dir=tmp_path / "audit")  # warns, never refuses
    assert any("metadata alone separates" in flag for flag in findings["flags"])
    assert findings["separability"]["stumps"]["format"] == 1.0
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["flags"] == findings["flags"]


def test_different_sizes_and_modes_are_a_shortcut(tmp_path):
    write(tmp_path / "d" / "real", 20, seed=1, size=40, mode="L")
    write(tmp_path / "d" / "fake", 20, seed=2, size=32)
    with pytest.warns(AuditWarning):
        flags = audit_split(tmp_path / "d", out_dir=tmp_path / "audit")["flags"]
    assert any(flag.startswith("size 40x40: 100% of real") for flag in flags)
    assert any(flag.startswith("mode L: 100% of real") for flag in flags)


def test_audit_from_the_command_line_warns_and_succeeds(tmp_path, capsys):
    write(tmp_path / "d" / "real", 10, seed=1, fmt="PNG")
    write(tmp_path / "d" / "fake", 10, seed=2, fmt="JPEG")
    with pytest.warns(AuditWarning):
        assert main(["audit", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "a")]) == 0
    assert "flag(s); audit written to" in capsys.readouterr().out
    assert (tmp_path / "a" / "audit.md").is_file()


def test_duplicates_across_splits_and_classes_in_hand_made_folders(tmp_path):
    data = tmp_path / "hand"
    fair_dataset(data / "train", n=10)
    fair_dataset(data / "val", n=4, seed=3)
    shutil.copy(data / "train" / "real" / "3.jpg", data / "val" / "real" / "leaked.jpg")
    shutil.copy(data / "train" / "fake" / "5.jpg", data / "train" / "real" / "confused.jpg")
    with pytest.warns(AuditWarning, match="across splits"):
        findings = audit_split(data, out_dir=tmp_path / "audit")
    dups = findings["duplicates"]
    assert dups["n_across_splits"] == 1 and dups["n_across_classes"] == 1
    assert any("leaked.jpg" in p for p in dups["across_splits"][0]["paths"])
    assert set(findings["counts"]) == {"train", "val"}


def test_a_split_made_by_split_dataset_is_read_from_its_manifest(split_data, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AuditWarning)  # the fixture's fakes differ on purpose
        findings = audit_split(split_data, out_dir=tmp_path / "audit")
    assert findings["source"] == "manifest" and findings["n_images"] == 80
    assert findings["duplicates"]["n_across_splits"] == 0
