"""Published values carry the epoch of the notebook's log they came from; the table marks the
ones that are not final (or not an accuracy over the validation set), can compare at those
epochs, and its footnotes say which comparison is printed."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.entities import Metric

from analysis.records import _at_epoch, load_records, run_budget
from analysis.summary import summarise
from pix3d.errors import UsageError
from pix3d.models import FINAL, TABLE_METRIC, published_epoch, published_note, published_value

SUBSETS = ("rgb", "rgb+mask", "rgb+mask+boundaries", "rgb+mask+boundaries+normals")


def test_each_published_cell_carries_its_epoch():
    epochs = {(m, s): published_epoch(m, TABLE_METRIC, s) for m in ("combined_net", "separate_net") for s in SUBSETS}
    assert sorted(k for k, e in epochs.items() if e == 25) == [
        ("combined_net", "rgb"), ("combined_net", "rgb+mask+boundaries+normals"),
        ("separate_net", "rgb"), ("separate_net", "rgb+mask"), ("separate_net", "rgb+mask+boundaries")]
    assert epochs[("combined_net", "rgb+mask")] == 24 and epochs[("separate_net", "rgb+mask+boundaries+normals")] == 24
    assert epochs[("combined_net", "rgb+mask+boundaries")] is None
    # The one that is not k/1002 says so; the values themselves are unchanged.
    value = published_value("combined_net", TABLE_METRIC, "rgb+mask+boundaries+normals")
    assert abs(value * 10.02 - round(value * 10.02)) > 0.1 and "not k/1002" in published_note(
        "combined_net", TABLE_METRIC, "rgb+mask+boundaries+normals")
    assert published_epoch("toy_or_unknown", TABLE_METRIC, "rgb") == FINAL


def _records(budget="published") -> pd.DataFrame:
    rows = [(m, s) for m in ("combined_net", "separate_net") for s in SUBSETS]
    return pd.DataFrame({
        "run_id": [f"r{i}" for i in range(len(rows))], "parent_run_id": "p", "sweep_id": "s",
        "end_time": range(len(rows)), "model": [m for m, _ in rows], "modalities": [s for _, s in rows],
        "lr": 1e-4, "seed": "0", "seed_quirks": False, "split": "published", "value": 0.5, "budget": budget,
    })


@pytest.mark.parametrize("at", ["last", "published"])
def test_the_table_marks_them_and_says_which_comparison_it_prints(at):
    table = summarise(_records(), experiment="x", at=at)
    text = table.to_markdown()
    assert "paper 72.1 (ep 24)" in text and "paper 41.1 (ep 24)" in text and "paper 64.4 (‡)" in text
    assert "paper 65.5 (‡)" in text and "paper 56.9 ·" not in text and "paper 56.9 |" in text
    compared = [n for n in table.notes if n.startswith("compared:")]
    assert len(compared) == 1
    assert ("ours at each run's last epoch" if at == "last" else "ours at the epoch each published value") in compared[0]
    assert any(n.startswith("‡ combined_net RGB+Mask+Boundaries 64.37: appears nowhere") for n in table.notes)
    assert any(n.startswith("ep 24 combined_net RGB+Mask 72.06: the epoch-24 value") for n in table.notes)
    assert not any("smaller budget" in n for n in table.notes)


def test_a_smaller_budget_is_labelled():
    label = run_budget({"image_size": "64", "epochs": "3", "max_train_images": "1300"})
    assert label == "64 px, 3 epochs, 1300 training images"
    assert run_budget({"image_size": "224", "epochs": "25", "max_train_images": "None"}) == "published"
    table = summarise(_records(budget=label), experiment="x")
    assert any("smaller budget" in n and label in n for n in table.notes)


def test_a_value_is_read_at_its_epoch():
    history = [Metric("val_azimuth_acc", v, 0, step) for step, v in ((23, 0.60), (24, 0.72), (25, 0.70))]
    assert _at_epoch(history, 0.70, 24) == 0.72
    assert _at_epoch(history, 0.70, None) == 0.70 and _at_epoch(history, 0.70, FINAL) == 0.70
    assert _at_epoch(history[:1], 0.60, 24) == 0.60  # a run that ended before it: its last


def test_published_epochs_by_category_is_refused():
    with pytest.raises(UsageError, match="--at published"):
        load_records("sqlite:////nonexistent.db", "x", at="published", by="category")
