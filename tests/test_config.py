import pytest

from rankrobust.config import ConfigError, config_from_dict, load_config, parse_override
from tests.conftest import REPO


def test_defaults_validate():
    cfg = config_from_dict({})
    assert cfg.loss.name == "sl" and cfg.model.name == "mf"


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        config_from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="did you mean 'noise'"):
        config_from_dict({"nosie": {}})


def test_invalid_choice_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'bsl'"):
        config_from_dict({"loss": {"name": "bls"}})
    with pytest.raises(ConfigError, match="did you mean 'lightgcn'"):
        config_from_dict({"model": {"name": "lightgnc"}})


@pytest.mark.parametrize("section,key,value", [
    ("loss", "tau", -1.0), ("noise", "neg_prob", 1.5), ("train", "epochs", "ten"),
    ("train", "lr", 0), ("train", "metric", "recall@7"), ("model", "dropout", 1.0),
])
def test_invalid_values(section, key, value):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({section: {key: value}})


def test_overrides_and_kwargs():
    cfg = config_from_dict({}).with_overrides({"loss.name": "bsl", "loss.tau": 0.2, "loss.tau1": 0.5})
    assert cfg.loss.kwargs() == {"mode": "paper", "tau1": 0.5, "tau2": 0.2}
    with pytest.raises(ConfigError, match="tau1.*'paper' only"):  # τ₁ would be stored but do nothing in multi mode
        cfg.with_overrides({"loss.mode": "multi", "loss.r": 1.1})
    cfg = cfg.with_overrides({"loss.mode": "multi", "loss.r": 1.1, "loss.tau1": None})
    assert cfg.loss.kwargs() == {"mode": "multi", "tau": 0.2, "r": 1.1}
    assert parse_override("train.ks=[10, 20]") == ("train.ks", [10, 20])
    with pytest.raises(ConfigError, match="section"):
        cfg.with_overrides({"trian.lr": 1.0})


def test_yaml_errors_name_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: 0.1, batchsize: 3}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*batch_size"):
        load_config(bad)


def test_presets_load():
    presets = sorted((REPO / "configs").glob("*.yaml"))
    assert presets, "configs/ holds the authors' presets"
    for path in presets:
        load_config(path)


def test_config_from_template_drops_options_of_other_entries():
    from rankrobust.config import config_from_template

    cfg = config_from_template({"model.name": "mf", "model.layers": 3, "train.sampler": "in_batch",
                                "train.num_negatives": 800, "loss.name": "bpr", "loss.tau": 0.2})
    tree = cfg.to_dict()
    assert "layers" not in tree["model"] and "num_negatives" not in tree["train"] and "tau" not in tree["loss"]
    assert config_from_template({"model.name": "lightgcn", "model.layers": 2}).model.options.layers == 2
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        config_from_template({"train.epoch": 3})


@pytest.mark.parametrize("text,expected", [("true", True), ("yes", True), ("1", True), ("false", False),
                                           ("no", False), ("0", False)])
def test_boolean_overrides_take_every_usual_spelling(text, expected):
    key, value = parse_override(f"train.bf16={text}")
    assert config_from_dict({"train": {"bf16": value}}).train.bf16 is expected


@pytest.mark.parametrize("text,shown", [("maybe", "'maybe'"), ("2", "2"), ("", "nothing")])
def test_a_boolean_override_that_is_not_one_names_the_value(text, shown):
    key, value = parse_override(f"train.bf16={text}")
    with pytest.raises(ConfigError, match=f"train.bf16 must be true or false, got {shown}"):
        config_from_dict({"train": {"bf16": value}})


# ---------------------------------------------------------------------------- issue 25: bounded YAML, --set, ood
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_billion_laughs_config_is_one_line_within_a_second(tmp_path, capsys):
    import time

    from rankrobust.cli import main

    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    assert len(LAUGHS) < 400
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config(path)
    assert time.perf_counter() - start < 1.0
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"rankrobust train: error: {path}: the YAML document expands to more than 100,000 values through "
                   f"its aliases (*name); a config or spec needs far fewer: write the values out or use fewer "
                   f"aliases\n")


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("train: &t {ks: [5, *t]}\n")
    with pytest.raises(ConfigError, match="recursive anchor"):
        load_config(path)


@pytest.mark.parametrize("text, problem", [
    ("train.lr=[", "expected the node content, but found '<stream end>' at line 1"),
    ("train.lr=!!python/object/apply:os.system [ls]", "YAML tags such as !!python/... are not read"),
])
def test_set_with_bad_yaml_is_one_line_naming_the_key(text, problem):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert str(info.value).startswith(f"--set {text}: the value of train.lr is not a plain YAML value (")
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_ood_test_fraction_without_the_popularity_split_is_refused():
    with pytest.raises(ConfigError, match=r"^data.ood_test_fraction = 0.3 acts only with data.split = popularity "
                                          r"\(here 'given'\); add --split popularity or remove it$"):
        config_from_dict({"data": {"ood_test_fraction": 0.3}})
    config_from_dict({"data": {"ood_test_fraction": 0.3, "split": "popularity"}})
