"""The table side by side for two splits: one row per model and split, the published values
only beside the published split (they were measured on it), the `split` grid's trials."""

from __future__ import annotations

import pandas as pd

from analysis.summary import summarise
from pix3d.constants import ABLATION_SUBSETS, modalities_key
from search.grids import get_grid


def _records(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (split, subset), accs in values.items():
        for seed, acc in enumerate(accs):
            rows.append({"run_id": f"{split}{subset}{seed}", "parent_run_id": "p", "sweep_id": "s",
                         "end_time": len(rows), "model": "separate_net", "modalities": subset, "lr": 1e-3,
                         "seed": str(seed), "seed_quirks": False, "split": split, "value": acc,
                         "baseline": 0.125})
    return pd.DataFrame(rows)


def test_two_splits_are_two_rows_and_only_the_published_one_carries_paper_values():
    table = summarise(_records({("published", "rgb"): [0.6, 0.7], ("by_model", "rgb"): [0.3, 0.4],
                                ("seed", "rgb+mask"): [0.5]}),  # "seed": the old name of published
                      experiment="split")
    labels = [row.label for row in table.rows]
    assert labels == ["separate_net [published split]", "separate_net [by_model split]"]
    published, by_model = table.rows
    assert published.cells["rgb"].mean == 65.0 and by_model.cells["rgb"].mean == 35.0
    assert published.cells["rgb+mask"].n == 1  # the old name's runs joined the published row
    assert published.cells["rgb"].published is not None and by_model.cells["rgb"].published is None


def test_one_split_keeps_the_plain_labels():
    table = summarise(_records({("by_model", "rgb"): [0.3, 0.4]}), experiment="x")
    assert [row.label for row in table.rows] == ["separate_net"]


def test_the_split_grid_runs_the_ablation_on_both_splits():
    trials = get_grid("split").trials(seeds=1)
    cells = {(t["model"], t["modalities"], t["split"]) for t in trials}
    assert len(trials) == len(cells) == 2 * len(ABLATION_SUBSETS) * 2
    assert {c[2] for c in cells} == {"published", "by_model"}
    assert {c[1] for c in cells} == {modalities_key(s) for s in ABLATION_SUBSETS}
