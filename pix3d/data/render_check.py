"""Does each entry's CAD model, rendered at its annotated pose, cover its mask? And a picture.

Owns the render check's numbers (`render_summary`: quantiles of the per-entry IoU of the
rendered silhouette with the annotated mask, in the crop window, that every preparation
records in meta.json), its text (`write_render_check`, `python -m pix3d.inspect DIR
--render-check`) and the contact sheet (`contact_sheet`, `--contact-sheet out.png`): per
entry rgb | mask | rgb with the oracle contour | oracle normals | oracle boundaries | predicted
normals (where `pix3d.data.predict` has its weights), to see that the oracle lines up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TextIO

import numpy as np
from PIL import Image, ImageDraw

from pix3d.constants import MODALITY_CHANNELS, MODALITY_TABLE
from pix3d.data.annotations import Annotation
from pix3d.errors import Pix3DError
from pix3d.fileio import atomic_path
from pix3d.render.oracle import IOU_THRESHOLD
from pix3d.render.shading import NORMALS_BACKGROUND

QUANTILES = (("min", 0.0), ("p05", 0.05), ("p25", 0.25), ("median", 0.5), ("p75", 0.75),
             ("p95", 0.95), ("max", 1.0))


def render_summary(ious: Sequence[float | None], problems: Sequence[str | None]) -> dict:
    """The manifest's `render_check`: how many entries rendered, IoU quantiles, how many below
    `IOU_THRESHOLD`, how many models could not be rendered."""
    values = np.array([v for v in ious if v is not None], dtype=np.float64)
    return {
        "threshold": IOU_THRESHOLD,
        "n": len(ious),
        "rendered": int(values.size),
        "failed": sum(p is not None for p in problems),
        "quantiles": {k: round(float(np.quantile(values, q)), 4) for k, q in QUANTILES} if values.size else {},
        "below": int((values < IOU_THRESHOLD).sum()),
    }


def write_render_check(meta: dict, out: TextIO, *, threshold: float = IOU_THRESHOLD) -> int:
    """The IoU distribution and the entries below `threshold` or not renderable, as text;
    returns how many entries are listed."""
    ious, problems = meta.get("render_iou"), meta.get("render_problem")
    if ious is None:
        out.write("this cache was prepared before the render check existed: prepare it again\n")
        return 0
    summary = render_summary(ious, problems)
    out.write(f"render check: IoU of each model's silhouette, rendered at its annotated pose in the "
              f"crop window, with its mask: {summary['rendered']} of {summary['n']} entries rendered, "
              f"{summary['failed']} cannot be\n")
    if summary["quantiles"]:
        out.write("  " + "  ".join(f"{k} {v:.3f}" for k, v in summary["quantiles"].items()) + "\n")
        edges = [0.0, 0.5, threshold, 0.8, 0.9, 0.95, 1.0001]
        counts = np.histogram([v for v in ious if v is not None], bins=edges)[0]
        out.write("  " + "  ".join(f"[{lo:.2f},{min(hi, 1):.2f}{']' if hi > 1 else ')'}: {c}"
                                   for lo, hi, c in zip(edges, edges[1:], counts)) + "\n")
    low = sorted((v, i) for i, v in enumerate(ious) if v is not None and v < threshold)
    out.write(f"{len(low)} entries below IoU {threshold}" + (":\n" if low else "\n"))
    for v, i in low:
        out.write(f"  entry {meta['index'][i]} ({meta['img'][i]}): IoU {v:.3f}, model {meta['model'][i]}\n")
    failed = [(i, p) for i, p in enumerate(problems) if p]
    if failed:
        out.write(f"{len(failed)} entries whose model cannot be rendered:\n")
        for i, p in failed:
            out.write(f"  entry {meta['index'][i]} ({meta['img'][i]}): {p}\n")
    return len(low) + len(failed)


def _tile(array: np.ndarray) -> np.ndarray:
    """A channels-first uint8 crop (1 or 3 channels) as an RGB tile."""
    array = array.transpose(1, 2, 0)
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def _overlay(rgb: np.ndarray, edges: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The photo crop with the oracle's silhouette contour in red (alignment at a glance)."""
    out = rgb.copy()
    contour = np.zeros_like(mask)
    contour[:-1] |= mask[:-1] != mask[1:]
    contour[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    out[contour] = (255, 0, 0)
    return out


def contact_sheet(root: Path, annotations: list[Annotation], png: Path, *, rows: int = 6,
                  size: int = 160, margin: float = 0.1) -> Path:
    """rows of rgb | mask | rgb + oracle contour | oracle normals | oracle boundaries
    [| predicted normals], for entries evenly spread over the set, into one PNG."""
    from pix3d.data.entry import EntryTask, prepare_entry
    from pix3d.data.maps import FILES, NONE, ORACLE, ORACLE_RENDERS, PREDICT, missing_predict_weights
    from pix3d.constants import MODALITY

    predict = missing_predict_weights(MODALITY["normals"]) is None
    header = ["rgb", "mask", "rgb + oracle contour", "oracle normals", "oracle boundaries"]
    header += ["predicted normals"] if predict else []
    picks = np.linspace(0, len(annotations) - 1, min(rows, len(annotations))).round().astype(int)
    lines = []
    for i in picks:
        a = annotations[i]
        base = dict(position=0, root=str(root), frame=a.img_size, bbox=a.bbox, size=size, margin=margin,
                    model=a.model, rot_mat=tuple(map(tuple, a.rot_mat.tolist())),
                    trans_mat=tuple(a.trans_mat.tolist()), focal_length=float(a.focal_length))
        files = tuple(getattr(a, m.annotation) if m.annotation else None for m in MODALITY_TABLE)
        kinds = tuple(FILES if m.annotation else ORACLE if m.render in ORACLE_RENDERS else NONE
                      for m in MODALITY_TABLE)
        result = prepare_entry(EntryTask(files=files, kinds=kinds, **base))
        if result.array is None:
            raise Pix3DError(f"{a.where()}: {result.error}")
        ch = {m: result.array[slice(*MODALITY_CHANNELS[m])] for m in MODALITY_CHANNELS}
        rgb = _tile(ch["rgb"])
        rendered = (ch["normals"] != NORMALS_BACKGROUND).any(0)  # the oracle's silhouette
        tiles = [rgb, _tile(ch["mask"]), _overlay(rgb, ch["boundaries"][0] > 0, rendered),
                 _tile(ch["normals"]), _tile(ch["boundaries"])]
        if predict:
            kinds = tuple(FILES if m.annotation else PREDICT if m.name == "normals" else m.fallback or NONE
                          for m in MODALITY_TABLE)
            predicted = prepare_entry(EntryTask(files=files, kinds=kinds, **base))
            tiles.append(_tile(predicted.array[slice(*MODALITY_CHANNELS["normals"])])
                         if predicted.array is not None else np.zeros_like(rgb))
        caption = f"entry {a.index} {a.img}  IoU " + (f"{result.iou:.3f}" if result.iou is not None
                                                       else str(result.render_problem))
        lines.append((caption, np.concatenate(tiles, axis=1)))
    width = max(t.shape[1] for _, t in lines)
    sheet = Image.new("RGB", (width, 14 + len(lines) * (size + 14)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, name in enumerate(header):
        draw.text((k * size + 3, 1), name, fill=(0, 0, 0))
    for r, (caption, strip) in enumerate(lines):
        top = 14 + r * (size + 14)
        draw.text((3, top), caption, fill=(0, 0, 0))
        sheet.paste(Image.fromarray(strip), (0, top + 13))
    with atomic_path(png) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(png)
