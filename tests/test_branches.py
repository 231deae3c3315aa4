"""`--branches`: seeded branch points, and branch rollouts sampled through the real
llama-cpp-python upstream that part from their source rollout at exactly one candidate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from test_consistency import two_rollouts

from vas_proxy.train.branches import branch_points


def test_branch_points_are_seeded_distinct_and_per_prompt():
    a, b = two_rollouts()
    b.prompt_index = 1
    points = branch_points([a, b], 3, k=6, seed=0)
    assert [r.prompt_index for r, _, _ in points] == [0, 0, 0, 1, 1]  # b has 2 cuts only
    assert len({(r.key, t) for r, t, _ in points}) == 5
    for r, t, prefix in points:
        assert prefix == "".join(r.tokens[:t]) and len(r.top[t]) >= 2
    assert branch_points([a, b], 3, k=6, seed=0) == points
    assert {t for _, t, _ in branch_points([a], 2, k=6, seed=1)} <= {0, 1, 2, 3, 5}
    a.top = []  # a rollout sampled without its top-k has no branch point
    assert [r.prompt_index for r, _, _ in branch_points([a, b], 3, k=6, seed=0)] == [1, 1]


def test_tiny_run_with_branches(upstream, tmp_path):
    from test_train import tiny_config

    from vas_proxy.train.command import run

    cfg = tiny_config(tmp_path, upstream, branches=2, branch_k=3, max_tokens=8, save_every=0)
    asyncio.run(run(cfg))
    out = Path(cfg.out)

    def read(name: str) -> list[dict]:
        return [json.loads(x) for x in (out / name).read_text().splitlines()]

    rollouts = {(r["prompt_index"], r["sample"]): r for r in read("rollouts.jsonl")}
    branches = read("branches.jsonl")
    held = {r["prompt_index"] for r in read("validation.jsonl")}
    train_prompts = {i for i, _ in rollouts} - held
    assert branches and {b["prompt_index"] for b in branches} <= train_prompts
    by_point: dict[tuple[int, int], list[dict]] = {}
    for b in branches:
        by_point.setdefault((b["prompt_index"], (b["sample"] - 1_000_000) // 1000), []).append(b)
    assert all(len(v) <= 3 for v in by_point.values())
    assert len(by_point) <= 2 * len(train_prompts)
    for group in by_point.values():
        # the branches of one point share a source prefix and part at one candidate each
        heads = []
        for b in group:
            src = [r for r in rollouts.values() if r["prompt_index"] == b["prompt_index"]
                   and any(b["response"].startswith("".join(r["tokens"][:t]) + c)
                           for t in range(len(r["tokens"])) for c, _ in r["top"][t])]
            assert src, b
            assert "vader" in b["rewards"]
            heads.append(b["response"])
        assert len(set(heads)) == len(heads) or len(group) == 1
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(m["kind"] == "train" for m in metrics)
    # a resumed run reuses every stored branch: none is sampled again
    before = (out / "branches.jsonl").read_text()
    asyncio.run(run(tiny_config(tmp_path, upstream, branches=2, branch_k=3, max_tokens=8,
                                save_every=0, epochs=2, resume=True)))
    assert (out / "branches.jsonl").read_text() == before
