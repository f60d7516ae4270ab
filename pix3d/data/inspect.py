"""What a Pix3D-format folder's labels look like before spending compute on it.

`entry_records` gives each entry's angles (degrees) and bin labels; `label_summary` the
entries per category, the label histogram of each head and its majority-class share (the
accuracy of always guessing the most frequent bin: the floor any model must beat);
`write_summary` prints that summary; `write_split_summary` prints the label histograms of a
split's training and validation sides beside each other (the published notebook's cell 7).
The command is `python -m pix3d.inspect`.
"""

from __future__ import annotations

from collections import Counter
from typing import TextIO

import numpy as np

from pix3d.constants import HEADS, N_BINS
from pix3d.data.annotations import Annotation
from pix3d.data.pose import Bins, angles


def entry_records(annotations: list[Annotation], bins: Bins) -> list[dict]:
    """One dict per entry with its angles (degrees) and bin labels."""
    pose = np.array([angles(a) for a in annotations], dtype=np.float64).reshape(-1, 3)
    labels = bins.labels(pose[:, 0], pose[:, 1], pose[:, 2])
    records = []
    for ann, (az, el, ip), lab in zip(annotations, pose, labels):
        records.append(
            {
                "index": ann.index,
                "img": ann.img,
                "category": ann.category,
                "model": ann.model,
                "azimuth": round(float(az), 4),
                "elevation": round(float(el), 4),
                "inplane": round(float(ip), 4),
                "azimuth_bin": int(lab[0]),
                "elevation_bin": int(lab[1]),
                "inplane_bin": int(lab[2]),
            }
        )
    return records


def label_summary(records: list[dict]) -> dict:
    """Counts per category, label histogram per head and majority-class share per head."""
    n = len(records)
    summary = {"n": n, "categories": dict(sorted(Counter(r["category"] for r in records).items()))}
    for head in HEADS:
        histogram = np.bincount([r[f"{head}_bin"] for r in records], minlength=N_BINS)
        summary[head] = {
            "histogram": histogram.tolist(),
            "majority_bin": int(histogram.argmax()),
            "majority_share": float(histogram.max() / n) if n else 0.0,
        }
    return summary


def write_summary(summary: dict, bins: Bins, out: TextIO) -> None:
    """The summary as text: categories with shares, then each head's histogram with bars."""
    n = summary["n"]
    out.write(f"{n} entries, {len(summary['categories'])} categories, bins '{bins.scheme}'\n\n")
    width = max(len(c) for c in summary["categories"])
    for category, count in summary["categories"].items():
        out.write(f"  {category:<{width}}  {count:>6}  {100 * count / n:5.1f}%\n")
    out.write("\n")
    for head in HEADS:
        info = summary[head]
        centres = bins.centres(head)
        out.write(
            f"{head}: majority bin {info['majority_bin']} holds {100 * info['majority_share']:.1f}% "
            f"(the majority-class baseline)\n"
        )
        top = max(info["histogram"]) or 1
        for b, count in enumerate(info["histogram"]):
            bar = "#" * round(30 * count / top)
            out.write(f"  bin {b} (~{centres[b]:7.1f} deg) {count:>6}  {bar}\n")
        out.write("\n")


def write_split_summary(split: str, train: dict, val: dict, bins: Bins, out: TextIO) -> None:
    """Each head's label histogram on the training and the validation side of a split, as
    counts and shares side by side: a bin empty on one side, or a majority that moves, shows
    before any training does."""
    out.write(f"split {split}: {train['n']} train / {val['n']} val, bins '{bins.scheme}'\n\n")
    for head in HEADS:
        centres = bins.centres(head)
        out.write(f"{head}: majority bin {train[head]['majority_bin']} in train "
                  f"({100 * train[head]['majority_share']:.1f}%), {val[head]['majority_bin']} in val "
                  f"({100 * val[head]['majority_share']:.1f}%)\n")
        out.write(f"  {'bin':<16} {'train':>7} {'%':>6}   {'val':>6} {'%':>6}\n")
        for b in range(N_BINS):
            t, v = train[head]["histogram"][b], val[head]["histogram"][b]
            out.write(f"  bin {b} (~{centres[b]:7.1f}) {t:>7} {100 * t / max(train['n'], 1):5.1f}%   "
                      f"{v:>6} {100 * v / max(val['n'], 1):5.1f}%\n")
        out.write("\n")
