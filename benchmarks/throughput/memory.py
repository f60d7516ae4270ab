"""What a trial process holds in memory, read from /proc: the process, and the cache's pages.

Owns `process_memory` (resident, proportional and unique bytes of this process, from
/proc/self/smaps_rollup), `buffer_memory` (the same for the mappings that hold one buffer,
such as the prepared cache's images: are they the object store's shared pages, or a private
copy?) and `train_pose_sampled`, the real `trainables.pose.train_pose` run with a thread that
samples both every half second and writes the peak to a JSON file per trial. Linux only; where
/proc is missing the figures are None.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pix3d.fileio import write_json

PROBE_KEY = "memory_probe_dir"   # Tune config key: where train_pose_sampled writes its peaks
SAMPLE_PERIOD_S = 0.5
_FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def _kib_fields(lines) -> dict[str, int]:
    """`Name:  123 kB` lines -> {Name: bytes} for the fields this module reads."""
    out = dict.fromkeys(_FIELDS, 0)
    for line in lines:
        name, _, rest = line.partition(":")
        if name in out:
            out[name] += int(rest.split()[0]) * 1024
    return out


def _summary(fields: dict[str, int]) -> dict[str, int]:
    """rss, pss, shared and private (unique) bytes."""
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "shared": fields["Shared_Clean"] + fields["Shared_Dirty"],
            "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def process_memory(pid: str = "self") -> dict | None:
    """rss / pss / shared / private bytes of a process (smaps_rollup), or None without /proc."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return _summary(_kib_fields(f))
    except OSError:
        return None


def buffer_memory(address: int, nbytes: int, pid: str = "self") -> dict | None:
    """Memory of the mappings that overlap [address, address + nbytes): rss / pss / shared /
    private bytes summed over them, their names (a shared object-store file or anonymous
    memory), and whether any is a shared mapping. None without /proc."""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            text = f.read()
    except OSError:
        return None
    totals, names, shared_mapping = dict.fromkeys(_FIELDS, 0), [], False
    inside = False
    for line in text.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            inside = lo < address + nbytes and address < hi
            if inside:
                names.append(head[5] if len(head) > 5 else "[anonymous]")
                shared_mapping |= head[1].endswith("s")
        elif inside:
            for key, value in _kib_fields([line]).items():
                totals[key] += value
    return {**_summary(totals), "mappings": names, "shared_mapping": shared_mapping}


class PeakSampler:
    """A daemon thread that keeps the peak of process_memory and buffer_memory."""

    def __init__(self, address: int, nbytes: int, period_s: float = SAMPLE_PERIOD_S) -> None:
        self.address, self.nbytes, self.period_s = address, nbytes, period_s
        self.peak: dict = {"process": None, "cache": None, "samples": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="memory-sampler")

    def _sample(self) -> None:
        process, cache = process_memory(), buffer_memory(self.address, self.nbytes)
        if process is not None and (self.peak["process"] is None or process["rss"] >= self.peak["process"]["rss"]):
            self.peak["process"] = process
        if cache is not None and (self.peak["cache"] is None or cache["rss"] >= self.peak["cache"]["rss"]):
            self.peak["cache"] = cache
        self.peak["samples"] += 1

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def __enter__(self) -> "PeakSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def train_pose_sampled(config: dict, data=None) -> None:
    """`trainables.pose.train_pose` with the peak memory of the process and of the cache's pages
    written to `<config[PROBE_KEY]>/<trial id>.json` (the key is not passed on)."""
    from ray import tune

    from trainables.pose import train_pose

    images = data.images
    out = Path(config[PROBE_KEY]) / f"{tune.get_context().get_trial_id()}.json"
    with PeakSampler(images.__array_interface__["data"][0], images.nbytes) as sampler:
        train_pose({k: v for k, v in config.items() if k != PROBE_KEY}, data)
    write_json(out, {**sampler.peak, "cache_bytes": int(images.nbytes)})
