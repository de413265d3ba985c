"""Reads a TensorBoard log directory with the tensorboard package's own reader, for
tests/tensorboard.rs.

    tensorboard_scalars.py LOGDIR [--live]

Prints one JSON object: for `purge` = EventAccumulator's default (purge_orphaned_data=True)
and `raw` (False), the scalar tags (`Tags()["scalars"]`), each tag's events as
[wall_time, step, value] in the order the reader keeps them, and the file_version read.
With --live it prints that line, waits for a line on stdin, then `Reload()`s the same
accumulators (as a running TensorBoard does) and prints a second line.
"""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def dump(acc):
    acc.Reload()
    tags = acc.Tags()["scalars"]
    scalars = {t: [[e.wall_time, e.step, e.value] for e in acc.Scalars(t)] for t in tags}
    return {"tags": sorted(tags), "scalars": scalars, "file_version": acc.file_version}


logdir = sys.argv[1]
accs = {mode: EventAccumulator(logdir, size_guidance={"scalars": 0}, purge_orphaned_data=purge) for mode, purge in [("purge", True), ("raw", False)]}
print(json.dumps({mode: dump(acc) for mode, acc in accs.items()}), flush=True)
if sys.argv[2:] == ["--live"]:
    sys.stdin.readline()
    print(json.dumps({mode: dump(acc) for mode, acc in accs.items()}), flush=True)
