"""Every shipped config composes and validates; bad configs fail fast, naming the key."""

from __future__ import annotations

import pytest

from fmlab.config import CONF_DIR, ConfigError, compose_config, validate_config

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra",))
# options that need a value the user must supply (marked ??? in the YAML)
REQUIRED = {
    ("data", "files"): ["data.sources=[x.jsonl]"],
    ("data", "prepared"): ["data.path=some/dir"],
    ("data", "streaming"): ["data.path=some/dir"],
    ("data", "release"): ["data.sources=[{path: x.jsonl, date_field: date}]"],
    ("experiment", "continual_update"): [
        "init_from=some/dir",
        "data.sources=[{path: x.jsonl, date_field: date}]",
    ],
    ("data", "sft_files"): ["data.sources=[x.jsonl]"],
    ("model", "pretrained"): ["model.name_or_path=some/dir"],
    ("tokenizer", "pretrained"): ["tokenizer.name_or_path=some/dir"],
    # presets that start from a base name it (FMLAB_BASE_MODEL or the key; fmlab.lineage)
    **{
        ("experiment", name): ["model.name_or_path=some/dir"]
        for name in ("multitask", "sft_arithmetic", "sft_classify", "sft_logic", "sft_reverse")
    },
    **{
        ("experiment", name): ["init_from=some/dir"]
        for name in ("continual_code", "continual_code_wsd", "domain_sft")
    },
}


def _options():
    for group in GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            yield group, path.stem


@pytest.mark.parametrize(("group", "option"), list(_options()))
def test_every_option_composes_and_validates(group, option, tmp_path):
    overrides = [f"{group}={option}", *REQUIRED.get((group, option), [])]
    cfg = compose_config("train", overrides, output_dir=tmp_path)
    validate_config(cfg)


def test_eval_config_validates(tmp_path):
    validate_config(compose_config("eval", ["ckpt_path=x.ckpt"], output_dir=tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+foo=1", r"foo: unknown key"),
        ("+optim.lrr=1", r"optim.lrr: unknown key .*did you mean 'lr'"),
        ("+trainer.max_stepz=3", r"trainer.max_stepz: unknown key .*did you mean 'max_steps'"),
        ("optim.lr=-1", r"optim.lr: Input should be greater than 0"),
        ("data.block_size=0", r"data.block_size: Input should be greater than 0"),
        ("data.batch_size=abc", r"data.batch_size: Input should be a valid integer"),
        ("data.val_fraction=1.5", r"data.val_fraction: Input should be less than 1"),
        ("optim.betas=[0.9,1.5]", r"optim.betas: 1: Input should be less than 1"),
        ("trainer.max_steps=-5", r"trainer.max_steps: Input should be greater than or equal to -1"),
        ("+trainer.gradient_clip_val=1", r"trainer.gradient_clip_val: .*module.grad_clip"),
        ("module.grad_clip=-1", r"module.grad_clip: Input should be greater than or equal to 0"),
        ("seed=-3", r"seed: Input should be greater than or equal to 0"),
        ("+data.sources=[{path: a, txt_field: x}]", r"data.sources: .*txt_field"),
        ("+model.hidden_sise=64", r"model.hidden_sise: unknown key .*did you mean 'hidden_size'"),
        ("+callbacks.throughput.windw=3", r"callbacks.throughput.windw: unknown key"),
        ("tokenizer.vocab_size=10", r"tokenizer.vocab_size: Input should be greater than or equal"),
        ("model._target_=fmlab.models.nope", r"model._target_: cannot import 'fmlab.models.nope'"),
    ],
)
def test_bad_values_fail_naming_the_key(override, message, tmp_path):
    cfg = compose_config("train", [override], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_all_errors_are_reported_at_once(tmp_path):
    cfg = compose_config(
        "train", ["optim.lr=-1", "data.block_size=0", "+foo=1"], output_dir=tmp_path
    )
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    text = str(err.value)
    assert "optim.lr" in text and "data.block_size" in text and "foo" in text


def test_missing_required_value_is_named(tmp_path):
    cfg = compose_config("train", ["data=files"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"data.sources: a value is required"):
        validate_config(cfg)
