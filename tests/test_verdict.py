"""`train`'s verdict and `--budget` planner: pure functions over validation metrics, data
statistics and this machine's planning rates."""

import json
import math

import pytest

from vas_proxy.errors import ConfigError
from vas_proxy.train.budget import (MAX_SAMPLES, MIN_SAMPLES, Budget, minutes_for, parse_budget,
                                    plan)
from vas_proxy.train.verdict import (GUIDES, MEAN, UNVALIDATED, WEAK, corr_interval, data_stats,
                                     describe_quality, judge)


def metrics(mse, base, corr, n=160, final=None):
    m = {"val_half_mse": mse, "val_half_baseline_mse": base, "val_half_corr": corr,
         "val_half_n": n}
    if final:
        m.update({"val_final_mse": final[0], "val_final_baseline_mse": final[1],
                  "val_final_corr": final[2], "val_final_n": n})
    return m


DENSE = data_stats([0.1 * (i % 7) for i in range(700)], [i % 100 for i in range(700)],
                   [1.0] * 10 + [0.5] * 90)


def test_the_known_models_get_the_verdicts_their_guidance_earned():
    # bundled positivity: guided > 3 s.e.; bundled plain: weak; the failed personal model
    assert judge(metrics(0.066, 0.119, 0.71), DENSE).label == GUIDES
    assert judge(metrics(0.073, 0.082, 0.34, n=60), DENSE).label == WEAK
    assert judge(metrics(0.077, 0.075, 0.16), DENSE).label == MEAN


def test_a_correlation_indistinguishable_from_zero_is_the_mean():
    # ratio below the bar, but 20 responses cannot tell 0.3 from 0
    assert corr_interval(0.3, 20)[0] < 0
    assert judge(metrics(0.08, 0.1, 0.3, n=20), DENSE).label == MEAN
    assert judge(metrics(0.08, 0.1, 0.3, n=400), DENSE).label == WEAK
    assert judge(metrics(0.1, 0.1, None), DENSE).label == MEAN  # a constant prediction


def test_no_held_out_data_is_said():
    v = judge({}, DENSE)
    assert v.label == UNVALIDATED and "--heldout-frac" in v.advice[0]


def test_a_sparse_reward_is_named_as_the_cause_with_what_to_do():
    rewards = [1.0] * 20 + [0.0] * 480  # 4% rewarded, as in the report
    stats = data_stats(rewards, [i % 32 for i in range(500)], [0.04] * 10 + [0.035] * 90)
    v = judge(metrics(0.077, 0.075, 0.16, n=48), stats, samples_per_prompt=16)
    assert v.label == MEAN
    text = v.text()
    assert "too few rewarded samples: 20 of 500" in text and "(4.0%)" in text
    assert "--samples-per-prompt 64" in text
    assert "too few prompts: 32" in text
    assert "rest on 48 responses" not in text  # 48 >= the bar
    # the dense data of a well-sampled run names none of those
    assert "rewarded samples" not in judge(metrics(0.09, 0.1, 0.3), DENSE).text()


def test_the_fit_is_read_from_the_training_loss_and_the_held_out_trend():
    rewards, prompts = [0.1 * (i % 7) for i in range(700)], [i % 100 for i in range(700)]
    flat = data_stats(rewards, prompts, [1.0] * 50 + [0.95] * 50)
    assert "under-fit: the training loss fell only 5%" in judge(metrics(0.1, 0.1, 0.05),
                                                                flat).text()
    worse = data_stats(rewards, prompts, [1.0] * 50 + [1.5] * 50)  # a loss that rose
    assert "under-fit: the training loss rose 50% (1 → 1.5)" in judge(metrics(0.1, 0.1, 0.05),
                                                                      worse).text()
    # the trajectories measured in docs/training/ablation/: `asks` at the recipe's 3 epochs
    # was still rising; vader's 6 epochs moved ±0.045 on a plateau; a loss that fell 60%
    # says nothing on its own (it fired "over-fit" on a model 3 more epochs improved)
    steep = [1.0] * 50 + [0.4] * 50
    asks = data_stats(rewards, prompts, steep, [0.264, 0.400, 0.547])
    text = judge(metrics(0.049, 0.059, 0.547, n=128), asks).text()
    assert "under-fit: the held-out correlation rose 0.40 → 0.55 over the last epoch" in text
    assert "train longer" in text and "--resume" in text and "over-fit" not in text
    vader = data_stats(rewards, prompts, steep, [0.170, 0.306, 0.415, 0.442, 0.486, 0.462])
    text = judge(metrics(0.097, 0.119, 0.462, n=128), vader).text()
    assert "fit:" not in text and "train longer" not in text
    falling = data_stats(rewards, prompts, steep, [0.30, 0.45, 0.38])
    text = judge(metrics(0.1, 0.1, 0.38, n=128), falling).text()
    assert "over-fit: the held-out correlation peaked at 0.45 (epoch 2) and ended at 0.38" in text
    assert "fewer epochs (a lower --epochs and --min-steps)" in text and "under-fit" not in text
    # a model that guides and was still rising is told it could do better
    guides = judge(metrics(0.066, 0.119, 0.71), data_stats(rewards, prompts, steep,
                                                           [0.5, 0.64, 0.71]))
    assert guides.label == GUIDES and not guides.causes and "train longer" in guides.advice[0]
    assert data_stats(rewards, prompts, steep, [None, 0.2]).heldout_corrs == [None, 0.2]
    assert "fit:" not in judge(metrics(0.1, 0.1, 0.2), data_stats(rewards, prompts, steep,
                                                                  [None, 0.2])).text()


def test_the_trend_bars_grow_on_few_held_out_halves():
    """The bars were read on 128 halves; on 64 (docs/training/steps/, measured trajectories)
    they are 0.05·√2: vader's 6-epoch wobble (peak 0.17, end 0.12) is not called over-fit,
    plain's 12-epoch fall (0.59 → 0.46) still is; more halves never lower them below 0.05."""
    rewards, prompts = [0.1 * (i % 7) for i in range(700)], [i % 100 for i in range(700)]
    steep = [1.0] * 50 + [0.4] * 50
    wobble = data_stats(rewards, prompts, steep, [0.167, 0.005, 0.127, 0.117, 0.117, 0.116])
    assert "over-fit" not in judge(metrics(0.1, 0.1, 0.116, n=64), wobble).text()
    assert "over-fit: the held-out correlation peaked at 0.17" in judge(
        metrics(0.1, 0.1, 0.116, n=128), wobble).text()
    fall = data_stats(rewards, prompts, steep, [-0.012, 0.358, 0.557, 0.429, 0.587, 0.535,
                                                0.588, 0.522, 0.476, 0.497, 0.477, 0.459])
    assert "over-fit: the held-out correlation peaked at 0.59 (epoch 7)" in judge(
        metrics(0.1, 0.1, 0.459, n=64), fall).text()
    rise = data_stats(rewards, prompts, steep, [0.40, 0.44])  # +0.04: under 0.05 at any n
    assert "under-fit" not in judge(metrics(0.1, 0.1, 0.44, n=10_000), rise).text()


def test_the_trend_is_read_per_epoch_from_the_metrics_file(tmp_path):
    from vas_proxy.train.report import heldout_corrs

    records = [{"kind": "validation", "step": 0, "epoch": 0, "val_half_corr": 0.9},  # untrained
               {"kind": "train", "step": 1, "epoch": 0, "loss": 0.1},
               {"kind": "validation", "step": 1, "epoch": 1, "val_half_corr": 0.3},
               {"kind": "validation", "step": 2, "epoch": 2, "val_half_corr": None},
               {"kind": "validation", "step": 3, "epoch": 3, "val_half_corr": 0.4}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert heldout_corrs(path) == [0.3, None, 0.4]
    assert heldout_corrs(tmp_path / "missing.jsonl") == []


def test_quality_line_shows_ratio_correlation_and_interval_on_both_views():
    line = describe_quality(metrics(0.066, 0.119, 0.71, final=(0.05, 0.1, 0.66)))
    assert line.startswith("half-responses (n=160): MSE 0.55× the mean predictor's, corr 0.71 [")
    assert "final responses (n=160): MSE 0.50×" in line
    with_within = describe_quality({**metrics(0.066, 0.119, 0.71), "val_half_within_corr": 0.4})
    assert with_within.endswith("corr 0.71 [0.62, 0.78], within prompts 0.40")
    lo, hi = corr_interval(0.71, 160)
    assert lo < 0.71 < hi and math.isclose(math.atanh(0.71) - math.atanh(lo),
                                           math.atanh(hi) - math.atanh(0.71))


@pytest.mark.parametrize("text, budget", [("45m", Budget(minutes=45)), ("1.5h", Budget(minutes=90)),
                                          ("30 min", Budget(minutes=30)),
                                          ("2000", Budget(rollouts=2000)),
                                          ("500 rollouts", Budget(rollouts=500))])
def test_budget_parses_minutes_and_rollouts(text, budget):
    assert parse_budget(text) == budget


@pytest.mark.parametrize("text", ["", "soon", "0", "-3m", "10s", "0m"])
def test_a_bad_budget_says_what_it_takes(text):
    with pytest.raises(ConfigError, match="minutes .* or a number of rollouts"):
        parse_budget(text)


def test_budget_plan_spends_the_budget_on_samples_per_prompt():
    cost = dict(max_tokens=48, epochs=3, heldout_frac=0.1, val_completions=4)
    p = plan(Budget(rollouts=2000), 32, **cost)
    assert p.samples_per_prompt == 62 and "2000 rollouts over 32 prompts" in p.note
    p = plan(Budget(minutes=60), 32, **cost)
    assert minutes_for(p.samples_per_prompt, 32, **cost) <= 60 \
        < minutes_for(p.samples_per_prompt + 1, 32, **cost)
    assert plan(Budget(minutes=1), 200, **cost).samples_per_prompt == MIN_SAMPLES
    assert "raised to that" in plan(Budget(minutes=1), 200, **cost).note
    big = plan(Budget(rollouts=10**6), 10, **cost)
    assert big.samples_per_prompt == MAX_SAMPLES and "add prompts" in big.note
    # --consistency trains ~48 more tokens per rollout: the same minutes buy fewer samples
    heavier = plan(Budget(minutes=60), 32, **cost, extra_tokens=48)
    assert heavier.samples_per_prompt < p.samples_per_prompt
    assert minutes_for(heavier.samples_per_prompt, 32, **cost, extra_tokens=48) <= 60
    # a step floor makes small samples cost as much training as 384 steps of 8 rollouts
    floor = dict(cost, epochs=6, min_steps=384)
    assert minutes_for(4, 32, **floor) > minutes_for(4, 32, **dict(cost, epochs=6))
    assert minutes_for(64, 32, **floor) == minutes_for(64, 32, **dict(cost, epochs=6))
    fl = plan(Budget(minutes=60), 32, **floor)
    assert minutes_for(fl.samples_per_prompt, 32, **floor) <= 60 \
        < minutes_for(fl.samples_per_prompt + 1, 32, **floor)
    # --branches 4 --branch-k 6: a fixed cost the samples must leave room for
    branched = plan(Budget(minutes=60), 32, **cost, branches=24)
    assert branched.samples_per_prompt < p.samples_per_prompt
    assert minutes_for(branched.samples_per_prompt, 32, **cost, branches=24) <= 60 \
        < minutes_for(branched.samples_per_prompt + 1, 32, **cost, branches=24)
    # --extra-rollouts: trained on, never sampled, also a fixed cost
    extra = plan(Budget(minutes=60), 32, **cost, extra_rollouts=500)
    assert extra.samples_per_prompt < p.samples_per_prompt
    assert minutes_for(extra.samples_per_prompt, 32, **cost, extra_rollouts=500) <= 60 \
        < minutes_for(extra.samples_per_prompt + 1, 32, **cost, extra_rollouts=500)


def test_a_low_within_prompt_correlation_cautions_a_guiding_model():
    from vas_proxy.train.verdict import GUIDES, WITHIN_CAUTION

    stats = data_stats([0.1, 0.5, 0.9] * 100, list(range(300)), [1.0, 0.5])
    good = {**metrics(0.066, 0.119, 0.71), "val_half_n": 160}
    # the personal model's figures: guides across prompts, 0.40 within
    v = judge({**good, "val_half_within_corr": WITHIN_CAUTION - 0.05}, stats)
    assert v.label == GUIDES and len(v.cautions) == 1 and "within prompts" in v.cautions[0]
    assert "caution: within prompts its correlation is only 0.40" in v.text()
    assert not judge({**good, "val_half_within_corr": 0.6}, stats).cautions
    assert not judge(good, stats).cautions  # unknown (a model from before the figure)
    # an old checkpoint's verdict, saved without the field, still loads
    from vas_proxy.train.verdict import Verdict
    old = {k: x for k, x in v.to_dict().items() if k != "cautions"}
    assert Verdict(**old).cautions == []


def test_a_residual_model_is_measured_against_the_reward_alone():
    """`--residual`: the untrained validation is the reward read on the text so far (plus a
    constant); the verdict shows it, and says so when the model adds nothing to it."""
    alone = metrics(0.043, 0.187, 0.89, n=80)
    better = judge(metrics(0.030, 0.187, 0.92, n=80), DENSE, reward_alone=alone)
    assert "the reward alone on the text so far: half-responses MSE 0.23× the mean " \
           "predictor's, corr 0.89" in better.quality
    assert not any("adds nothing" in c for c in better.cautions)
    worse = judge(metrics(0.050, 0.187, 0.87, n=80), DENSE, reward_alone=alone)
    assert worse.label == GUIDES and any("reward:SPEC" in c for c in worse.cautions)
    assert "reward alone" not in judge(metrics(0.050, 0.187, 0.87, n=80), DENSE).quality


@pytest.mark.parametrize("epochs,min_steps,steps_per_epoch,want", [
    (6, 384, 32, 12),    # 256 rollouts at batch 8: the floor doubles the epochs
    (6, 384, 64, 6),     # 512 rollouts: 6 epochs are 384 steps already
    (6, 384, 200, 6),    # more data: --epochs rules
    (6, 384, 50, 8),     # rounded up: 400 steps
    (6, 0, 32, 6),       # --min-steps 0: exactly --epochs
    (0, 384, 32, 0)])    # --epochs 0 samples only, whatever the floor
def test_min_steps_raises_the_epochs_of_small_runs(epochs, min_steps, steps_per_epoch, want):
    from vas_proxy.train.config import TrainConfig
    from vas_proxy.train.trainer import epochs_for

    cfg = TrainConfig(prompts="p", reward="vader", out="o", epochs=epochs, min_steps=min_steps)
    assert epochs_for(cfg, steps_per_epoch) == want
