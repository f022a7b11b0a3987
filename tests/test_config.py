import re

import pytest

from conftest import tiny_config
from fedrsclip.config import ConfigError, load_config, parse_overrides


def test_defaults_are_the_paper_setting():
    cfg = load_config()
    assert (cfg.model.arch, cfg.model.pretrained, cfg.model.random_init) == ("ViT-B-16", "openai", False)
    assert (cfg.prompt.n_ctx, cfg.prompt.class_position) == (4, "middle")
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.eval_batch_size) == (0.001, 32, 100)
    assert (cfg.ot.eps, cfg.ot.mass, cfg.ot.tol, cfg.ot.max_iter) == (0.1, 0.8, 1e-3, 100)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: fedprox\ntrain:\n  lr: 0.01\n  rounds: 3\not:\n  eps: 0.05\n")
    cfg = load_config(path, ["train.rounds=7", "dpac.negatives=peers"])
    assert (cfg.algorithm, cfg.train.lr, cfg.train.rounds, cfg.ot.eps, cfg.dpac.negatives) == (
        "fedprox",
        0.01,
        7,
        0.05,
        "peers",
    )


@pytest.mark.parametrize(
    "override, words",
    [
        (["train.lrr=1"], "unknown setting 'train.lrr'"),
        (["algorithm=fedfoo"], "unknown algorithm 'fedfoo'"),
        (["train.lr=fast"], "train.lr must be float"),
        (["ot.mass=2"], "ot.mass"),
        (["prompt.class_position=left"], "prompt.class_position"),
        (["dpac.negatives=all"], "dpac.negatives"),
        (["model.pretrained=null"], "model.random_init"),
        (["train"], "section.key=value"),
    ],
)
def test_bad_settings_name_the_setting(override, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=override)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(notmap)


def test_parse_overrides_nests_and_parses_yaml():
    assert parse_overrides(["a.b=1", "a.c=null", "d=x"]) == {"a": {"b": 1, "c": None}, "d": "x"}


def test_tiny_config_is_explicitly_random():
    cfg = tiny_config()
    assert cfg.model.random_init and cfg.model.pretrained is None


# ---- issue 11, item 8: every numeric setting refused where it enters, correct values accepted -------------------


def _numeric_settings():
    """(section, name, type, interval) of every int / float setting of the schema, the OT section included."""
    import dataclasses
    import typing

    from fedrsclip.config import Config

    out = []
    for section in dataclasses.fields(Config):
        value = getattr(Config(), section.name)
        if not dataclasses.is_dataclass(value):
            continue
        hints = typing.get_type_hints(type(value))
        for f in dataclasses.fields(value):
            kinds = set(typing.get_args(hints[f.name]) or (hints[f.name],)) - {type(None)}
            if kinds & {int, float} and bool not in kinds:
                out.append((section.name, f.name, float if float in kinds else int, f.metadata.get("range")))
    return out


NUMERIC = _numeric_settings()


def test_every_numeric_setting_declares_its_range():
    assert len(NUMERIC) >= 25
    missing = [f"{section}.{name}" for section, name, _, interval in NUMERIC if interval is None]
    assert not missing, f"declare a range next to these settings (fedrsclip.ranges.ranged): {missing}"


@pytest.mark.parametrize("section,name", [(s, n) for s, n, kind, _ in NUMERIC if kind is float])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf"])
def test_nan_and_inf_are_refused_for_every_float_setting(section, name, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{name} must be .*got -?(nan|inf)"):
        load_config(overrides=[f"{section}.{name}={value}"])


@pytest.mark.parametrize("section,name,interval", [(s, n, i) for s, n, _, i in NUMERIC])
def test_values_below_the_range_are_refused_for_every_setting(section, name, interval):
    below = interval.low - 1 if interval.low_closed else interval.low
    with pytest.raises(ConfigError, match=rf"{section}\.{name}\b.* must"):
        load_config(overrides=[f"{section}.{name}={int(below) if float(below).is_integer() else below}"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("dpac.scale=.nan", "dpac.scale must be positive; got nan"),  # failed later as "lower train.lr"
        ("dpac.weight=.nan", "dpac.weight must be >= 0; got nan"),  # silently turned DPAC off
        ("dpac.weight=-1", "dpac.weight must be >= 0; got -1"),
        ("train.momentum=1.5", "train.momentum must be between 0 and 1"),
        ("privacy.dp_delta=1", "privacy.dp_delta must be between 0 and 1"),
        ("train.seed=-3", "train.seed must be between 0 and"),
        ("ot.mass=.inf", "ot.mass must be between 0 and 1"),
        ("train.lr=1e-3x", "train.lr must be float; got '1e-3x'"),
        ("train.lr=[1", "override 'train.lr=[1': the value is not valid YAML"),  # was a raw yaml traceback
        ("train.lr={a: 1", "not valid YAML"),
    ],
)
def test_issue_examples_are_refused_naming_the_setting(override, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(overrides=[override])


def test_conflicting_overrides_are_refused():
    with pytest.raises(ConfigError, match="'train' is given a value of its own"):
        parse_overrides(["train=3", "train.lr=1"])
    with pytest.raises(ConfigError, match="replaces the section 'train'"):
        parse_overrides(["train.lr=1", "train=3"])


def test_exponent_floats_are_accepted_in_overrides_and_files(tmp_path):
    # YAML 1.1 reads 1e-2 (no dot) as a string; float settings parse it as the number it is
    cfg = load_config(overrides=["ot.eps=1e-2", "ot.tol=1e-4", "train.lr=1e-3", "privacy.dp_delta=1E-6"])
    assert (cfg.ot.eps, cfg.ot.tol, cfg.train.lr, cfg.privacy.dp_delta) == (0.01, 1e-4, 1e-3, 1e-6)
    assert all(type(v) is float for v in (cfg.ot.eps, cfg.ot.tol, cfg.train.lr, cfg.privacy.dp_delta))
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5e-4\not:\n  eps: 5e-2\n")
    cfg = load_config(path)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.ot.eps) == (1e-3, 5e-4, 0.05)
    path.write_text("train:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match="train.lr must be positive; got nan"):
        load_config(path)


def test_boundaries_that_are_allowed():
    cfg = load_config(
        overrides=[
            "dpac.weight=0",
            "train.momentum=0",
            "train.weight_decay=0",
            "ot.mass=1",
            "privacy.dp_noise_multiplier=0",
            "data.num_workers=0",
            "prompt.init_std=0",
        ]
    )
    assert cfg.dpac.weight == 0.0 and cfg.ot.mass == 1.0


def test_interval_notation():
    from fedrsclip.ranges import Interval

    assert 1 in Interval.parse("(0, 1]") and 0 not in Interval.parse("(0, 1]")
    assert Interval.parse("[0, 1)").describe() == "between 0 and 1 (0 <= x < 1)"
    for bad in ("0, 1", "(1, 0)", "(0; 1)", "[a, 1]"):
        with pytest.raises(ValueError):
            Interval.parse(bad)
