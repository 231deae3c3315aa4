"""The RL baselines VAS is compared with: the embedded model fine-tuned by TRL (DPO on pairs
from `train`'s rollouts, GRPO online), served through llama.cpp as a LoRA GGUF, evaluated by
the same harness (`vas-proxy eval --tuned`).

    config.py   the `baseline rl` flags (BaselineConfig)
    data.py     preference pairs, reward mixtures
    policy.py   the causal LM from the bundled GGUF, its LoRA, a saved tuned model
    fit.py      TRL's DPOTrainer and GRPOTrainer, metrics, checkpoints
    export.py   adapter → GGUF (llama.cpp's converter), baseline.json, curves
    scorer.py   KL to the base and log-likelihoods under a tuned model (eval, forgetting)
    command.py  `vas-proxy baseline rl`
"""
