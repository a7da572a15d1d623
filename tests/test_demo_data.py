"""The synthetic default data: seeded, a manipulation confined to its mask, never overwriting."""
from __future__ import annotations

import numpy as np
import pytest

from deepfake_detector.demo_data import generate_demo_data, make_fake_example
from deepfake_detector.discovery import find_images


def files_and_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = generate_demo_data(tmp_path / "a", n_per_class=4, image_size=32, seed=0)
    b = generate_demo_data(tmp_path / "b", n_per_class=4, image_size=32, seed=0)
    c = generate_demo_data(tmp_path / "c", n_per_class=4, image_size=32, seed=1)
    assert files_and_bytes(a) == files_and_bytes(b) != files_and_bytes(c)
    assert len(find_images(a / "real")) == len(find_images(a / "fake")) == 4
    assert len(list((a / "masks").glob("*.png"))) == 4 and (a / "README.md").is_file()


@pytest.mark.parametrize("index", range(5))
def test_fake_differs_from_its_base_only_inside_the_mask(index):
    base, fake, mask = make_fake_example(seed=0, index=index, image_size=64)
    assert 0.05 < mask.mean() < 0.6
    assert np.array_equal(fake[~mask], base[~mask])
    assert np.abs(fake[mask].astype(int) - base[mask]).mean() > 1  # the artefact is there


def test_rerun_is_a_no_op_and_other_images_are_never_overwritten(tmp_path):
    out = generate_demo_data(tmp_path / "demo", n_per_class=3, image_size=32)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    generate_demo_data(out, n_per_class=3, image_size=32)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    with pytest.raises(Exception, match="demo"):  # a different generation over the same folder
        generate_demo_data(out, n_per_class=5, image_size=32)
    users = tmp_path / "dataset_raw" / "real"
    users.mkdir(parents=True)
    (users / "mine.png").write_bytes(next(out.rglob("*.png")).read_bytes())
    with pytest.raises(Exception, match="dataset_raw"):
        generate_demo_data(tmp_path / "dataset_raw", n_per_class=3, image_size=32)
    assert (users / "mine.png").is_file() and len(list((tmp_path / "dataset_raw").rglob("*"))) == 2
