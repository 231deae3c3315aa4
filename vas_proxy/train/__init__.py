"""Training value models through the black box (`vas-proxy train`).

Modules, each owning one thing: `prompts` (the prompt set), `rollouts` (sampling from the
upstream and the JSONL records), `td` (TD(lambda) math and batches), `trainer` (optimisation,
checkpoints, resumption), `validation` (held-out half-response check), `report` (curves),
`config` (the options) and `command` (the CLI and the run's phases).
"""
