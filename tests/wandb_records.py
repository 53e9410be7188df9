"""Read an offline W&B run file (`run-*.wandb`) into its protobuf records, to check what a dashboard would get.

wandb ≥ 0.20 no longer ships a Python reader for these files; they are the LevelDB log format (32 KiB blocks of
checksummed, possibly fragmented records) behind a 7-byte `:W&B` header, and each record is wandb's own
`wandb_internal_pb2.Record`, which we parse with wandb's protobuf classes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7  # checksum u32, length u16, type u8
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    pos, parts = 7, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = [chunk]
        elif kind == MIDDLE:
            parts.append(chunk)
        elif kind == LAST:
            parts.append(chunk)
            yield b"".join(parts)
            parts = []


def read_run(path: str | Path, wait_s: float = 60.0) -> dict:
    """`{"run": RunRecord, "config": {key: value}, "summary": {key: value}, "history": [{key: value}, ...],
    "metrics": {name: step metric}, "records": [record kinds]}`.

    `wandb.finish()` can return before wandb's writer process has written the run's last records (seen on a
    loaded 2-core machine), so this waits, up to `wait_s`, for the `exit` record that ends every finished run.
    """
    import time

    deadline = time.monotonic() + wait_s
    while True:
        out = _read(path)
        if "exit" in out["records"] or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read(path: str | Path) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    out = {"run": None, "config": {}, "summary": {}, "history": [], "records": [], "metrics": {}}
    for payload in _payloads(Path(path).read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        out["records"].append(kind)
        if kind == "run":
            out["run"] = rec.run
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "metric":  # define_metric: {name or glob: step metric}
            out["metrics"][rec.metric.name or rec.metric.glob_name] = rec.metric.step_metric
        elif kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return out
