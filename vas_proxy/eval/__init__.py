"""Evaluation harness (`vas-proxy eval`): base sampling, VAS and Best-of-N on the same prompts,
with rewards, KL to the base, upstream cost and plots.

    config.py   what is run (settings) and with which options
    harness.py  runs it through the one engine / `bestofn`, one record per generation
    report.py   summary.csv, summary.md and the PNG plots, from results.jsonl alone
    efficiency.py  reward per nat: each row's effective ρ, Best-of-N's exact KL (design §1.10)
"""

from .config import EvalConfig, Setting
from .harness import run
from .report import summarise, write_report

__all__ = ["EvalConfig", "Setting", "run", "summarise", "write_report"]
