"""The two facts every file of a run carries wherever it ends up (a paper, a slide, a
repository): RANDOM INIT, the backbone was not ImageNet-pretrained, and SYNTHETIC DATA, the run
was trained on the project's generated demo set. Both come from the run's config.json (its
weights_record and synthetic_data), so they are known without the data at hand.

`flags_of_config` names them; `flag_record` is what metrics_*.json carry; `flags_of_path` finds
the run a file is written into (a folder holding a run's config.json, the file's own folder or
up to two above it), so that every figure (figures.save_figure) and every table
(tables.write_table) written inside a run carries its flags without each caller passing them;
`flags_of_training` names them before config.json is written; `register_folder_flags` gives
them to a folder outside any run whose files still show one (the notebook's OUT/figures, beside
its OUT/run). No torch, no matplotlib.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .files import read_json_object

# run_dir.CONFIG_JSON (tests/test_report_agrees.py checks they agree), not imported from there:
# figures and tables import this module, and run_dir's imports must stay free to reach them.
CONFIG_JSON = "config.json"

RANDOM_INIT = "RANDOM INIT"
SYNTHETIC_DATA = "SYNTHETIC DATA"
# What each flag means, in the few words a footer or a table note has room for.
FLAG_MEANINGS = {RANDOM_INIT: "backbone not ImageNet-pretrained",
                 SYNTHETIC_DATA: "trained on the generated demo set, not real images"}
RUN_LEVELS = 3  # a file's folder and up to two above: RUN/figures/x, RUN/eval/<name>/x
# Folders outside a run whose files show one: folder -> what gives their flags when one is written.
FOLDER_FLAGS: dict[Path, Callable[[], list[str]]] = {}


def weights_record_of(config: dict) -> dict | None:
    """config["weights_record"]; runs of an older format kept the record in config["weights"]."""
    for key in ("weights_record", "weights"):
        if isinstance(config.get(key), dict):
            return config[key]
    return None


def synthetic_record_of(config: dict) -> dict | None:
    """config["synthetic_data"]; runs from before that record: looked up from their data_dir."""
    if "synthetic_data" in config:
        return config["synthetic_data"] or None
    if isinstance(config.get("data_dir"), str):
        from .demo_data import synthetic_origin
        return synthetic_origin(config["data_dir"])
    return None


def flags_of_config(config) -> list[str]:
    """[RANDOM_INIT] when the weights record says pretrained false, [SYNTHETIC_DATA] when the
    data were the demo set; both, one or neither, in that order."""
    if not isinstance(config, dict):
        return []
    record = weights_record_of(config)
    flags = [RANDOM_INIT] if record is not None and record.get("pretrained") is False else []
    return flags + ([SYNTHETIC_DATA] if synthetic_record_of(config) else [])


def flag_record(flags: list[str]) -> dict:
    """The keys metrics_*.json carry: random_init, synthetic_data (true or false) and flags."""
    return {"random_init": RANDOM_INIT in flags, "synthetic_data": SYNTHETIC_DATA in flags,
            "flags": list(flags)}


def flags_of_training(weights_record: dict, data_dir) -> list[str]:
    """The flags of a run trained with `weights_record` on `data_dir`, before its config.json
    exists (run_dir.run_record writes this weights_record and synthetic_origin(data_dir), which
    synthetic_record_of looks up here): for the files a run writes before it, the data audit and
    `--lr find`'s plot, and for `lr-find`'s sweep, which is no run."""
    return flags_of_config({"weights_record": weights_record, "data_dir": str(data_dir)})


def read_config(run_dir) -> dict | None:
    """run_dir/config.json when it is a run's (a JSON object with a weights record), else None;
    never raises (run_dir.read_run_config is the checking reader)."""
    config = read_json_object(Path(run_dir) / CONFIG_JSON)
    return config if config is not None and weights_record_of(config) is not None else None


def flags_of_run(run_dir) -> list[str]:
    return flags_of_config(read_config(run_dir))


def run_dir_of(path) -> Path | None:
    """The run directory a file at `path` is written into: the nearest of its folder and up to
    two above holding a run's config.json; None outside a run."""
    folder = Path(path).absolute().parent
    for candidate in [folder, *folder.parents][:RUN_LEVELS]:
        if read_config(candidate) is not None:
            return candidate
    return None


def register_folder_flags(folder, flags: Callable[[], list[str]]) -> None:
    """Files written straight into `folder` carry flags() (asked at each write, so they follow
    what the folder's owner has done by then): for a folder of a run's pictures that lies
    outside the run."""
    FOLDER_FLAGS[Path(folder).absolute()] = flags


def flags_of_path(path) -> list[str]:
    """The flags of the run a file at `path` belongs to (register_folder_flags' folders first,
    then run_dir_of); [] outside a run."""
    registered = FOLDER_FLAGS.get(Path(path).absolute().parent)
    if registered is not None:
        return registered()
    run_dir = run_dir_of(path)
    return flags_of_run(run_dir) if run_dir is not None else []


def flag_note(flags: list[str], separator: str = "; ") -> str:
    """'RANDOM INIT (backbone not ImageNet-pretrained); SYNTHETIC DATA (...)'; '' without flags."""
    return separator.join(f"{flag} ({FLAG_MEANINGS[flag]})" for flag in flags)
