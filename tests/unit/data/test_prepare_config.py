"""conf/prepare.yaml and its recipes compose and validate; bad values fail naming the key."""

from __future__ import annotations

import pytest

from fmlab.config import CONF_DIR, ConfigError, build, compose_config, validate_config
from fmlab.prepare import STAGES, PrepareSchema

RECIPES = sorted(p.stem for p in (CONF_DIR / "prepare" / "recipe").glob("*.yaml"))
REQUIRED = ["sources=[x.jsonl]", "output_dir=out"]


def _validate(cfg):
    validate_config(cfg, root=PrepareSchema, groups=(*STAGES, "tokenizer"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_validates_and_builds(recipe, tmp_path):
    cfg = compose_config("prepare", [*REQUIRED, f"prepare/recipe={recipe}"], output_dir=tmp_path)
    _validate(cfg)
    stages = {name: build(cfg.get(name), name) for name in STAGES}
    kind = {"sft": "sft", "classification": "classification", "preference": "preference"}
    kind = kind.get(recipe, "text")
    assert stages["structure"].kind == kind
    assert (stages["segment"] is None) == (recipe == "records")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+nonsense=1", r"nonsense: unknown key"),
        ("num_proc=0", r"num_proc: Input should be greater than or equal to 1"),
        ("+clean.pi=[email]", r"clean.pi: unknown key .*did you mean 'pii'"),
        ("clean.pii=[mail]", r"clean.pii: 0: Input should be 'email', 'ip' or 'phone'"),
        ("filter.min_alpha_words=2", r"filter.min_alpha_words: Input should be less than or"),
        ("dedup.num_perm=8", r"dedup.num_perm: Input should be greater than or equal to 16"),
        ("split.by=nope", r"split.by: Input should be 'auto', 'text', 'prompt', 'id' or 'date'"),
        ("decontaminate.ngram=2", r"decontaminate.ngram: Input should be greater than or equal"),
        ("segment.block_size=0", r"segment.block_size: Input should be greater than 0"),
        ("output_format=csv", r"output_format: Input should be 'arrow', 'parquet' or 'stre"),
        ("write.chunk_bytes=big", r"write.chunk_bytes: String should match pattern"),
        ("sources=[{path: a, txt_field: x}]", r"sources.0.*txt_field"),
        ("structure.kind=image", r"structure.kind: Input should be 'text', 'sft', .*'preference'"),
    ],
)
def test_bad_values_fail_naming_the_key(override, message, tmp_path):
    cfg = compose_config("prepare", [*REQUIRED, override], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        _validate(cfg)
