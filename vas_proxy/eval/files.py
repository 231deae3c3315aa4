"""The files of an eval directory and their readers, shared by the harness (which writes them)
and the report (which reads them), so neither imports the other."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS_FILE = "results.jsonl"  # one record per generation, appended as they finish
CONFIG_FILE = "eval.json"  # the EvalConfig of the run(s)
TIMINGS_FILE = "timings.json"  # wall seconds per setting


def kl_field(records: list[dict]) -> str:
    """Which KL a row of records reads: `kl_path` (the lower-noise estimate) where every record
    has it, else `kl` (chosen tokens, or Best-of-N's bound), so that one row never mixes the
    two estimators (directories written before `kl_path` was recorded)."""
    return "kl_path" if records and all(r.get("kl_path") is not None for r in records) else "kl"


def read_records(path: Path) -> list[dict]:
    """The records of a results.jsonl; a line cut by a killed run is skipped (and redone)."""
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a killed run: that generation is redone
            print(f"warning: {path} line {n} is incomplete; redoing it", file=sys.stderr)
    return records


def read_json(path: Path) -> dict:
    """A JSON file of the directory, {} when it is not there yet."""
    return json.loads(path.read_text()) if path.exists() else {}
