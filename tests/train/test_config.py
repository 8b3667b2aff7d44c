import dataclasses
from pathlib import Path

import pytest

from lmfast.train.config import ConfigError, TrainConfig, config_table, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SEED_KEYS = ["vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta", "num_epochs",
             "batch_size", "learning_rate", "grad_clip_norm", "use_lr_schedule", "max_learning_rate",
             "min_learning_rate", "warmup_iters", "cosine_cycle_iters", "train_data_path", "val_data_path",
             "checkpoint_dir", "checkpoint_interval", "log_level", "log_file", "log_interval"]


def test_seed_config_loads_unchanged_with_the_seed_values():
    cfg = load_config(CONFIGS / "config_simple.yaml")
    assert (cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff) == \
        (50257, 512, 768, 12, 12, 3072)
    assert cfg.learning_rate == 1e-4 and cfg.max_learning_rate == 1e-3 and cfg.min_learning_rate == 1e-5
    assert cfg.num_epochs == 100 and cfg.batch_size == 32 and cfg.use_lr_schedule is True
    assert (cfg.train_data_path, cfg.val_data_path) == ("data/train.txt", "data/val.txt")
    assert (cfg.checkpoint_dir, cfg.checkpoint_interval, cfg.log_file, cfg.log_interval) == \
        ("checkpoints", 10, "training.log", 100)


def test_every_seed_key_is_in_the_schema():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(SEED_KEYS) <= names


@pytest.mark.parametrize("name", ["quickstart", "tinystories_17m", "gpt2_124m", "config_simple", "finetune_hf",
                                  "jsonl_packed"])
def test_shipped_configs_load(name):
    assert isinstance(load_config(CONFIGS / f"{name}.yaml"), TrainConfig)


def test_tinystories_config_is_the_cs336_recipe():
    cfg = load_config(CONFIGS / "tinystories_17m.yaml")
    assert (cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.num_heads,
            cfg.rope_theta) == (10000, 256, 512, 1344, 4, 16, 10000.0)
    assert cfg.batch_size * cfg.context_length * cfg.max_steps * cfg.gradient_accumulation_steps == 327_680_000


def test_unknown_config_key_suggests_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learing_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'learing_rate'.*did you mean 'learning_rate'"):
        load_config(path)


def test_unknown_override_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(None, parse_overrides(["batchsize=4"]))


@pytest.mark.parametrize("override, message", [
    (dict(batch_size=0), "batch_size: 0 is too small; it must be >= 1"),
    (dict(learning_rate="fast"), "learning_rate: cannot use 'fast'; expected a number"),
    (dict(dtype="fp8"), "dtype: 'fp8' is not allowed; choose one of auto, float32, bfloat16, float16"),
    (dict(num_heads=5, d_model=512), r"d_model \(512\) must be divisible by num_heads \(5\)"),
    (dict(num_heads=4, d_model=12), "RoPE needs an even head dim"),
    (dict(betas=[0.9, 1.5]), "betas: cannot use"),
    (dict(min_learning_rate=1.0, max_learning_rate=0.1), "min_learning_rate"),
    (dict(warmup_iters=100, cosine_cycle_iters=10), "cosine_cycle_iters"),
    (dict(device="tpu"), "device must be auto, cpu, cuda, cuda:N or mps"),
    (dict(vocab_size=2.5), "vocab_size: cannot use 2.5; expected an integer"),
    (dict(use_lr_schedule="maybe"), "use_lr_schedule: cannot use 'maybe'; expected true or false"),
    (dict(batch_size=None), "batch_size cannot be null"),
])
def test_bad_value_names_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**override)


@pytest.mark.parametrize("override, message", [
    (dict(seed=10**25), "seed: 10000000000000000000000000 is too large; it must be <= 9223372036854775807"),
    (dict(max_steps=2**63), "max_steps: 9223372036854775808 is too large"),
    (dict(batch_size="1e999"), "batch_size: cannot use '1e999'; expected an integer"),
    (dict(warmup_iters=float("inf")), "warmup_iters: cannot use inf; expected an integer"),
    (dict(learning_rate=True), "learning_rate: cannot use True; expected a number"),
    (dict(checkpoint_dir={"a": 1}), "checkpoint_dir: cannot use {'a': 1}; expected a string"),
    (dict(special_tokens={"a": 1}), "special_tokens: cannot use {'a': 1}; expected a list of non-empty strings"),
    (dict(special_tokens=[None]), "special_tokens: cannot use \\[None\\]"),
    (dict(special_tokens=[""]), "special_tokens: cannot use"),
    (dict(d_model=63, num_heads=3), r"d_model \(63\) is odd, so no num_heads gives the even head dim"),
    (dict(d_model=96, num_heads=5), r"num_heads that work for this d_model: 1, 2, 3, 4, 6, 8, 12, 16, 24, 48"),
    (dict(device="cuda:abc"), "got 'cuda:abc'"),
    (dict(device="cuda:-1"), "got 'cuda:-1'"),
    (dict(train_data_path="x" * 500), None),
])
def test_extreme_values_name_the_key_and_the_limit(override, message):
    if message is None:  # a long string is fine; only errors shorten what they quote
        assert TrainConfig(**override).train_data_path == "x" * 500
        return
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**override)


def test_a_huge_d_model_that_does_not_divide_is_answered_at_once():
    with pytest.raises(ConfigError, match="num_heads that work for this d_model: 1, 2, 4, 8"):
        TrainConfig(d_model=2**62, num_heads=3)


def test_quoted_values_are_cut_short_in_errors():
    with pytest.raises(ConfigError) as err:
        TrainConfig(batch_size="x" * 10_000)
    assert len(str(err.value)) < 300 and "(10002 characters)" in str(err.value)


@pytest.mark.parametrize("pair, message", [
    ("max_steps=[1", r"--set 'max_steps=\[1': the value of 'max_steps' is not valid YAML \(expected ',' or ']', but "
                     r"got '<stream end>' at line 1, column 3\); quote a string value"),
    ("seed={", "the value of 'seed' is not valid YAML"),
    ("log_file=a: b: c", "mapping values are not allowed here"),
    ("tokenizer=!!python/object:os.system", "could not determine a constructor"),
])
def test_set_values_that_are_not_yaml_name_the_key(pair, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides([pair])


def test_a_config_file_that_is_not_utf8_is_named_with_the_byte(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"seed: 1\nlog_file: \xff.log\n")
    with pytest.raises(ConfigError, match=r"c.yaml' is not UTF-8 text \(byte 0xff at offset 18\); save it as UTF-8"):
        load_config(path)


def test_a_config_path_that_is_a_directory_is_called_one(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; pass a YAML file"):
        load_config(tmp_path)


def test_invalid_yaml_in_a_config_file_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nbatch_size: [4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\n" not in str(err.value) and "at line 3, column 1" in str(err.value)


def test_yaml_scientific_notation_strings_become_floats():
    # YAML 1.1 (PyYAML) reads `1e-4` as the string "1e-4"; the seed config writes numbers that way.
    cfg = TrainConfig(learning_rate="1e-4", max_steps="1e3")
    assert cfg.learning_rate == 1e-4 and cfg.max_steps == 1000


def test_set_overrides_any_key_with_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 8\n")
    cfg = load_config(path, parse_overrides(["batch_size=4", "betas=[0.8, 0.9]", "compile=true", "val_data_path=null"]))
    assert cfg.batch_size == 4 and cfg.betas == (0.8, 0.9) and cfg.compile == "true" and cfg.val_data_path is None


def test_set_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_overrides(["batch_size"])


def test_missing_config_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_config_that_is_not_a_mapping_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_config_round_trips_through_to_dict():
    cfg = TrainConfig(batch_size=3, betas=(0.5, 0.6))
    assert TrainConfig(**cfg.to_dict()) == cfg


def test_config_table_lists_every_key():
    table = config_table()
    for f in dataclasses.fields(TrainConfig):
        assert f"`{f.name}`" in table
