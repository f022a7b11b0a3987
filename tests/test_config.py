import pytest

from fedrsclip.config import ConfigError, load_config, parse_overrides
from conftest import tiny_config


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
    assert (cfg.algorithm, cfg.train.lr, cfg.train.rounds, cfg.ot.eps, cfg.dpac.negatives) == \
        ("fedprox", 0.01, 7, 0.05, "peers")


@pytest.mark.parametrize("override, words", [
    (["train.lrr=1"], "unknown setting 'train.lrr'"),
    (["algorithm=fedfoo"], "unknown algorithm 'fedfoo'"),
    (["train.lr=fast"], "train.lr must be float"),
    (["ot.mass=2"], "ot.mass"),
    (["prompt.class_position=left"], "prompt.class_position"),
    (["dpac.negatives=all"], "dpac.negatives"),
    (["model.pretrained=null"], "model.random_init"),
    (["train"], "section.key=value"),
])
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
