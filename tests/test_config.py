"""The grouped run config, its flat shorthand, objective settings, and the run plan's derived numbers."""

from __future__ import annotations

import pytest

from experiments.config import ConfigError, RunConfig
from experiments.plan import BatchLayout, RunPlan
from models.objectives import DiffusionConfig


def test_flat_and_grouped_forms_are_the_same_config_and_round_trip():
    flat = RunConfig.from_dict({"objective": "diffusion", "lr": 2e-3, "mc_samples": 8, "vocab_size": 1024,
                                "eval_epochs": [1, 4], "threads": 1})
    grouped = RunConfig.from_dict({"objective": "diffusion", "optim": {"lr": 2e-3}, "diffusion": {"mc_samples": 8},
                                   "data": {"vocab_size": 1024}, "eval": {"eval_epochs": [1, 4]},
                                   "run": {"threads": 1}})
    assert flat == grouped
    assert flat.objective_config == DiffusionConfig(mc_samples=8)
    assert RunConfig.from_dict(flat.to_dict()) == flat
    assert "run" not in flat.identity() and flat.identity()["diffusion"]["mc_samples"] == 8


def test_settings_of_another_objective_are_checked_and_ignored():
    cfg = RunConfig.from_dict({"objective": "ar", "diffusion": {"mc_samples": 16}})
    assert cfg.to_dict()["ar"] == {"input_mask_rate": 0.0} and "diffusion" not in cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown config key diffusion.mc_sample"):
        RunConfig.from_dict({"objective": "ar", "diffusion": {"mc_sample": 16}})
    with pytest.raises(ConfigError, match="mc_samples must be at least 1"):
        RunConfig.from_dict({"objective": "ar", "diffusion": {"mc_samples": 0}})


@pytest.mark.parametrize("d, message", [
    ({"schedule": "linear"}, "optim.schedule must be one of cosine, constant, wsd"),
    ({"lr": True}, "optim.lr must be a number"),
    ({"eval_epochs": 3}, "eval.eval_epochs must be a list of integers"),
    ({"precision": "fp8"}, "run.precision must be one of"),
    ({"objective": "ar", "eval_estimator": "time"}, "'eval_estimator' does not apply to objective 'ar'"),
    ({"optim": {"learning_rate": 1}}, "unknown config key optim.learning_rate"),
    ({"model_args": {"causal": False}}, "model_args may not set causal"),
    ({"attn_topk": 0}, "attn_topk must be a positive integer"),
    ({"beta2": 1.0}, "beta2 must lie in [0, 1)"),
    ({"objective": "block_diffusion", "attention": "topk"}, "needs an attention kind that takes a mask (dense)"),
])
def test_wrong_values_are_refused_by_type_and_owner(d, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_dict(d)


def test_attention_flags_reach_the_model_config():
    cfg = RunConfig.from_dict({"attention": "nsa", "attn_block": 16, "attn_topk": 3, "attn_window": 32})
    m = cfg.model_config()
    assert (m.attention, m.attn_block, m.attn_topk, m.attn_window, m.causal) == ("nsa", 16, 3, 32, True)
    assert RunConfig.from_dict({"objective": "diffusion"}).model_config().causal is False


def test_run_plan_derives_every_number_once():
    cfg = RunConfig.from_dict({"objective": "diffusion", "unique_tokens": 1000, "epochs": 3, "batch_size": 8,
                               "devices": 2, "micro_batch_size": 2, "mc_samples": 5, "vocab_size": 512})
    plan = RunPlan.of(cfg, train_sequences=8, val_sequences=4, vocab_size=512)  # ceil(1000 / 128) rows
    assert plan.batch == BatchLayout(global_batch=8, per_device=4, accumulation=2)
    assert (plan.steps_per_epoch, plan.total_steps, plan.tokens_seen) == (1, 3, 3000)
    assert plan.flops == 6 * plan.non_embedding_params * 3000 and plan.non_embedding_params == 106_816
    assert plan.eval_epochs == [1, 2, 3] and plan.eval_passes == 4 * 5
    assert plan.row_base()["mc_samples"] == 5 and plan.row_base()["elbo_weight"] == "L/l"
    with pytest.raises(ConfigError, match="does not split over 3 ranks"):
        BatchLayout.of(RunConfig.from_dict({"batch_size": 8, "devices": 3}), 128)


def test_a_flag_beats_either_form_in_the_file_and_both_forms_at_once_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.0005}\n")
    assert RunConfig.from_yaml(path, lr=0.002).optim.lr == 0.002
    path.write_text("lr: 0.001\noptim: {lr: 0.0005}\n")
    with pytest.raises(ConfigError, match="given both flat and as optim.lr"):
        RunConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="must be one objective name"):
        RunConfig.from_dict({"objective": ["ar", "diffusion"], "eps": 0.1})


def test_configs_of_older_run_folders_are_read_as_today():
    from experiments.config import upgrade_legacy

    old = {"objective": "diffusion", "lr": 2e-3, "mc_samples": 8, "diffusion_eps": 0.01, "elbo_estimator": "time",
           "train_estimator": "count"}
    cfg = RunConfig.from_dict(upgrade_legacy(old))
    assert cfg.objective_config == DiffusionConfig(eps=0.01, mc_samples=8, eval_estimator="time",
                                                   train_estimator="count")
    ar = RunConfig.from_dict(upgrade_legacy({**old, "objective": "ar"}))
    assert ar.to_dict()["ar"] == {"input_mask_rate": 0.0} and ar.optim.lr == 2e-3


def test_an_objective_flag_beats_the_objective_block_of_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("objective: diffusion\ndiffusion: {eps: 0.01, mc_samples: 8}\n")
    cfg = RunConfig.from_yaml(path, eps=0.002)
    assert cfg.objective_config.eps == 0.002 and cfg.objective_config.mc_samples == 8
    with pytest.raises(ConfigError, match="not with strategy fsdp"):
        RunConfig.from_dict({"ema_decay": 0.99, "strategy": "fsdp"})


def test_dropout_sites_are_first_class_settings_recorded_in_the_results_row():
    cfg = RunConfig.from_dict({"resid_dropout": 0.1, "embd_dropout": 0.05, "model_args": {"dropout": 0.2}})
    m = cfg.model_config()
    assert (m.resid_dropout, m.attn_dropout, m.embd_dropout) == (0.1, 0.2, 0.05)  # unset site: model_args' dropout
    row = RunPlan.of(cfg, train_sequences=8, val_sequences=4, vocab_size=512).row_base()
    sites = (row["resid_dropout"], row["attn_dropout"], row["embd_dropout"], row["weight_decay"])
    assert sites == (0.1, 0.2, 0.05, 0.1)
    assert cfg.to_dict()["optim"]["resid_dropout"] == 0.1
    with pytest.raises(ConfigError, match="model_args may not set attn_dropout: use --attn-dropout"):
        RunConfig.from_dict({"model_args": {"attn_dropout": 0.1}})
    with pytest.raises(ConfigError, match=r"embd_dropout must lie in \[0, 1\)"):
        RunConfig.from_dict({"embd_dropout": 1.0})
