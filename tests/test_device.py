"""The value model on each device this machine has: the CPU always, CUDA where present (the
device checks run this file on a GPU machine; CI has none, so there it runs the CPU cases).

Prefix-KV reuse must equal full recomputation on the device, in float32 and bfloat16; the
device's float32 values must match the CPU's; a TD(lambda) step must run there and learn.
"""

from __future__ import annotations

import pytest
import torch

from vas_proxy.train.backbone import build_model
from vas_proxy.train.config import TrainConfig
from vas_proxy.train.td import make_example
from vas_proxy.train.trainer import Trainer
from vas_proxy.values.model import tiny_value_model
from vas_proxy.values.scorer import CheckpointValue

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PROMPT = "<|im_start|>user\nTell me about your day.<|im_end|>\n<|im_start|>assistant\n"
CANDIDATES = [" Great", " great", "!", "", "\n", " 😊", "'s", "ly", " the", " awful"]
STATES = ["", " It", " It was", " It was wonder", " It was wonderful", " It was", " It is",
          " It is a long day, and"]
# Tolerances: float32 differs by summation order only; bfloat16 keeps 8 bits of mantissa,
# so reused and recomputed attention may round apart by a few 1e-3 of a unit-scale value.
ATOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


@pytest.fixture(scope="module")
def tiny():
    return tiny_value_model(seed=3, hidden_size=64, num_layers=3)


def on(device: str, dtype: torch.dtype) -> CheckpointValue:
    """A fresh copy of the tiny model (same seed) on `device` in `dtype`."""
    model, tokenizer = tiny_value_model(seed=3, hidden_size=64, num_layers=3)
    model.backbone.to(dtype)
    return CheckpointValue(model.to(device).eval(), tokenizer, f"tiny-{device}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_prefix_reuse_matches_recompute(device, dtype):
    cached = on(device, dtype)
    full = CheckpointValue(cached.model, cached.tokenizer, "full", use_cache=False)
    spread = 0.0
    for state in STATES:
        got = cached.score(PROMPT, state, CANDIDATES)
        want = full.score(PROMPT, state, CANDIDATES)
        assert got == pytest.approx(want, abs=ATOL[dtype]), (device, state)
        spread = max(spread, max(want) - min(want))
    assert spread > 10 * ATOL[dtype]  # the comparison is not between constants


@pytest.mark.parametrize("device", DEVICES)
def test_device_float32_matches_cpu(tiny, device):
    cpu = CheckpointValue(*tiny)
    here = on(device, torch.float32)
    for state in STATES[:4]:
        assert here.score(PROMPT, state, CANDIDATES) == pytest.approx(
            cpu.score(PROMPT, state, CANDIDATES), abs=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_td_steps_on_device_lower_the_loss(tmp_path, device):
    cfg = TrainConfig(prompts="-", reward="vader", out=str(tmp_path), backbone="tiny",
                      lora_r=4, lr=3e-3, batch_size=4, device=device, quiet=True)
    model, tok = build_model(cfg)
    assert model.device.type == torch.device(device).type
    texts = [(" It was a wonderful, happy day.", 0.9), (" It was awful and sad.", -0.8),
             (" Great fun with friends!", 0.8), (" A terrible, boring day.", -0.6)]
    examples = [make_example(tok, PROMPT, r, v) for r, v in texts]
    trainer = Trainer(cfg, model, tok, examples, tmp_path)
    losses = [trainer.train_step([[0, 1, 2, 3]])["loss"] for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses
