"""The contact sheet and the class plot are drawn from a built dataset."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import build_settings, cached_records
from shardtools.build import run_build
from shardtools.cli import main
from shardtools.errors import DatasetError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview")
    cached_records(root, "v", 30, seed=4, label_of=lambda i: f"taxon-{i % 3}")
    run_build(build_settings(root, splits={"train": 0.5, "val": 0.5}))
    return root / "dataset"


def test_contact_sheet_grid_holds_the_samples_asked_for(dataset, tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["preview", str(dataset), "--split", "val", "--out", str(out), "--samples", "9",
                 "--seed", "3"]) == 0
    with Image.open(out) as sheet:
        assert sheet.width == 8 * 160 and sheet.height == 2 * (160 + 18)
        # the tiles are not blank: real photos were drawn
        assert len(np.unique(np.asarray(sheet.convert("L")))) > 50


def test_contact_sheet_of_a_missing_split_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(DatasetError, match="no split 'holdout'"):
        from shardtools.preview import contact_sheet

        contact_sheet(dataset, "holdout", tmp_path / "x.png")


def test_class_plot_is_written(dataset, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "classes.png"
    assert main(["status", str(dataset), "--plot", str(out)]) == 0
    with Image.open(out) as plot:
        assert plot.width > 300 and plot.height > 200


def test_class_plot_with_thousands_of_classes_shows_every_class(tmp_path):
    """iNaturalist-sized label sets: every class counted (the title and return value), not
    only the largest 60."""
    pytest.importorskip("matplotlib")
    import json

    from shardtools.preview import class_plot

    dataset = tmp_path / "ds"
    dataset.mkdir()
    counts = {"train": {str(c): 1 + c % 40 for c in range(3000)},
              "val": {str(c): c % 3 for c in range(0, 3000, 2)}}
    manifest = {"format_version": 1, "num_classes": 3000, "splits": {"train": {}, "val": {}},
                "class_counts": counts, "builds": []}
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    assert class_plot(dataset, tmp_path / "c.png") == 3000
    with Image.open(tmp_path / "c.png") as plot:
        assert plot.width >= 800
