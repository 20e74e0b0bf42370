"""Registries (rankrobust/registry.py) and how configs, flags and sweeps read them.

Also the worked examples of docs/EXTENDING.md, run for real: a pairwise hinge
loss, a backbone with an auxiliary loss and a sampler, each registered in a
monkeypatched copy of its registry (nothing is added to the library).
"""
import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from rankrobust.batching import BATCHINGS
from rankrobust.cli import main
from rankrobust.config import CONFIG_SCHEMA, ConfigError, config_flags, config_from_dict
from rankrobust.data.registry import DATASETS
from rankrobust.experiment import load_data, prepare_data, run_experiment
from rankrobust.losses import LOSSES, _check_shapes, _masked_sum, _neg_count, get_loss
from rankrobust.models import MF, MODELS, ModelOptions
from rankrobust.registry import NoOptions, Registry, non_negative, option, positive
from rankrobust.sampling import SAMPLERS, NegativesOptions, build_sampler
from rankrobust.sweeps import parse_spec
from rankrobust.train import Trainer
from tests.test_sweep import write_tiny_data
from tests.test_train import tiny_config

#: section, selector key, registry
SELECTORS = [("loss", "name", LOSSES), ("model", "name", MODELS), ("train", "sampler", SAMPLERS),
             ("train", "batching", BATCHINGS)]


# ---------------------------------------------------------------------------- the Registry class
def test_unknown_name_names_closest_and_all_valid():
    with pytest.raises(ConfigError, match=r"unknown loss 'bls' \(did you mean 'bsl'\?\); valid losses are \[.*'sl'"):
        LOSSES.entry("bls")
    with pytest.raises(ConfigError, match="did you mean 'lightgcn'"):
        MODELS.entry("lightgnc")
    with pytest.raises(ConfigError, match="valid batchings are"):
        BATCHINGS.entry("user")
    with pytest.raises(ConfigError, match="unknown loss 'zzz'; valid"):  # nothing close: no suggestion
        get_loss("zzz")


def test_registry_mapping_entries_and_checks():
    reg = Registry("thing")

    @dataclass
    class Opts:
        size: int = option(3, "how big", check=positive, flag="--size")

    @reg.register("a", Opts)
    def make_a():
        """Makes an a.

        More text."""

    reg.register("b", summary="the b")(len)
    assert list(reg) == ["a", "b"] and len(reg) == 2 and reg["a"] is make_a and reg.names() == ("a", "b")
    assert reg.entry("a").summary == "Makes an a." and reg.entry("b").summary == "the b"
    assert reg.entry("b").options is NoOptions and reg.entry("b").option_names == ()
    assert reg.owners("size") == ["a"] and reg.owners("nope") == [] and reg.all_option_names() == {"size"}
    assert reg.entry("a").make_options().size == 3
    with pytest.raises(ConfigError, match=r"a\.size must be > 0, got -1"):
        reg.entry("a").make_options(size=-1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(len)
    with pytest.raises(TypeError, match="must be a dataclass"):
        reg.register("c", options=dict)(len)
    field = dataclasses.fields(Opts)[0]
    assert field.metadata["doc"] == "how big" and field.metadata["flag"] == "--size"


def test_option_owners():
    assert LOSSES.owners("tau")[:3] == ["bce", "sl", "bsl"] and "bpr" not in LOSSES.owners("tau")  # registration order
    assert "bsl" in LOSSES.owners("tau1") and "sl" not in LOSSES.owners("tau1") and "ccl" in LOSSES.owners("margin")
    assert "lightgcn" in MODELS.owners("layers") and "mf" not in MODELS.owners("layers")
    assert set(MODELS.owners("dim")) == set(MODELS)  # every backbone has a size
    assert "in_batch" not in SAMPLERS.owners("num_negatives")
    assert set(SAMPLERS.owners("num_negatives")) == set(SAMPLERS) - {"in_batch", "full"}
    assert SAMPLERS.owners("pop_alpha") == ["popularity"]
    assert BATCHINGS.owners("positives_per_user") == ["users"]


# ---------------------------------------------------------------------------- every entry reaches configs and flags
@pytest.mark.parametrize("section,key,registry", SELECTORS, ids=[f"{s}.{k}" for s, k, _ in SELECTORS])
def test_every_entry_parses_and_is_a_flag(section, key, registry):
    flags = {f.key: f for f in config_flags()}
    selector = flags[f"{section}.{key}"]
    for name in registry:
        cfg = config_from_dict({section: {key: name}})
        chosen = getattr(cfg, section)
        holder = next(attr for sel, (attr, _) in type(chosen).SELECTORS.items() if sel == key)
        assert isinstance(getattr(chosen, holder), registry.entry(name).options)
        assert cfg.to_dict()[section][key] == name
        assert name in selector.help, (name, selector.help)
        for f in dataclasses.fields(registry.entry(name).options):  # the entry's options: keys and flags
            assert f.name in cfg.to_dict()[section]
            if f.metadata.get("flag"):
                flag = flags[f"{section}.{f.name}"]
                assert flag.flag == f.metadata["flag"] and name in flag.help


def test_every_dataset_parses():
    for name in DATASETS:
        assert config_from_dict({"data": {"name": name}}).data.name == name
    assert "--dataset" in {f.flag for f in config_flags()}


def test_dataset_flag_lists_every_dataset():
    (flag,) = [f for f in config_flags() if f.key == "data.name"]
    assert all(name in flag.help for name in DATASETS), flag.help


def test_flag_help_names_the_owners():
    flags = {f.flag: f for f in config_flags()}
    assert all(f"{name}" in flags["--tau"].help for name in LOSSES.owners("tau"))
    assert flags["--tau"].help.startswith("loss bce, sl, bsl: temperature τ")
    assert "; psl: PSL robustness temperature τ* (τ*/c plays SL's τ) (default 0.05);" in flags["--tau"].help
    assert flags["--layers"].help == ("model lightgcn: LightGCN propagation layers (hops) (default 3); xsimgcl: "
                                      "propagation layers L (XSimGCL: mean of layers 1..L, no layer-0 term) "
                                      "(default 2)")
    assert flags["--dim"].help == f"embedding size d (model {', '.join(MODELS.owners('dim'))}; default 64)"
    assert "(batching users;" in flags["--positives-per-user"].help
    assert f"(sampler {', '.join(SAMPLERS.owners('num_negatives'))};" in flags["--negatives"].help
    assert len(flags) == len({f.key for f in flags.values()})  # one flag per key


def test_shared_flag_lists_each_entrys_default(monkeypatch):
    """An entry that shares a flag and its doc line but not its default (a SimGCL beside XSimGCL, τ_cl = 0.2)
    shows its own default in the flag's help, not the first entry's (issue 24)."""
    from rankrobust.models import XSimGCLOptions

    @dataclass
    class SimGCLOptions(XSimGCLOptions):
        cl_tau: float = option(0.2, XSimGCLOptions.__dataclass_fields__["cl_tau"].metadata["doc"],
                               check=positive, flag="--cl-tau")

    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    MODELS.register("simgcl_example", SimGCLOptions)(MODELS["xsimgcl"])
    help_ = {f.flag: f for f in config_flags()}["--cl-tau"].help
    assert help_ == "temperature τ_cl of XSimGCL's cross-layer InfoNCE (model xsimgcl: default 0.1; simgcl_example: default 0.2)"
    same = {f.flag: f for f in config_flags()}["--eps"].help  # inherited unchanged: one default, both names
    assert same.endswith("(model xsimgcl, simgcl_example; default 0.1)")
    no_default = {f.flag: f for f in config_flags()}["--tau1"].help  # None is not shown as a default
    assert "default None" not in no_default


# ---------------------------------------------------------------------------- options of another entry
@pytest.mark.parametrize("tree,where,registry,expected", [
    ({"loss": {"name": "bpr", "tau": 0.1}}, "loss.tau does not apply to loss.name = 'bpr'", LOSSES, {"sl", "bsl"}),
    ({"model": {"name": "mf", "layers": 2}}, "model.layers does not apply to model.name = 'mf'", MODELS, {"lightgcn"}),
    ({"train": {"sampler": "in_batch", "num_negatives": 8}},
     "train.num_negatives does not apply to train.sampler = 'in_batch'", SAMPLERS,
     {"uniform", "uniform_exclude", "popularity"}),
    ({"train": {"batching": "pairs", "positives_per_user": 4}},
     "train.positives_per_user does not apply to train.batching = 'pairs'", BATCHINGS, {"users"}),
])
def test_option_of_another_entry_is_rejected(tree, where, registry, expected):
    """The message names the key, the chosen entry and every entry that takes the key (from the registry)."""
    with pytest.raises(ConfigError) as err:
        config_from_dict(tree)
    message = str(err.value)
    assert message.startswith(where), message
    named = message.split(f"it is an option of {registry.kind} ", 1)[1].split(". Remove it", 1)[0].split(", ")
    key = where.split(" ", 1)[0].split(".", 1)[1]
    assert named == registry.owners(key) and expected <= set(named)


def test_switching_entry_drops_defaults_only():
    base = config_from_dict({})
    bpr = base.with_overrides({"loss.name": "bpr"})
    assert bpr.loss.name == "bpr" and bpr.to_dict()["loss"] == {"name": "bpr"} and bpr.loss.kwargs() == {}
    with pytest.raises(ConfigError, match="loss.tau does not apply to loss.name = 'bpr'"):
        base.with_overrides({"loss.name": "bpr", "loss.tau": 0.2})
    with pytest.raises(ConfigError, match="loss.tau does not apply"):  # a τ set on purpose is not dropped silently
        config_from_dict({"loss": {"tau": 0.3}}).with_overrides({"loss.name": "bpr"})
    assert "num_negatives" not in base.with_overrides({"train.sampler": "in_batch"}).to_dict()["train"]
    assert "layers" not in config_from_dict({"model": {"name": "lightgcn"}}).with_overrides(
        {"model.name": "mf"}).to_dict()["model"]
    users = base.with_overrides({"train.batching": "users"})
    assert users.train.batching_options.positives_per_user == 8
    assert "positives_per_user" not in users.with_overrides({"train.batching": "pairs"}).to_dict()["train"]


def test_bpr_run_config_json_has_no_tau(tmp_path):
    cfg = tiny_config(tmp_path, train={"epochs": 1}).with_overrides({"loss.name": "bpr"})
    run_experiment(cfg, tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["loss"] == {"name": "bpr"}
    sections = {k: v for k, v in stored.items() if k != "schema"}  # config.json carries its layout's version
    assert stored["schema"] == CONFIG_SCHEMA and config_from_dict(stored).to_dict() == sections  # reads back as itself


# ---------------------------------------------------------------------------- sweep templates
def spec_doc(base=None, grid=None, overrides=None):
    return {"name": "t", "base": base or {}, "grid": grid or {}, "overrides": overrides or []}


def test_sweep_template_drops_inapplicable_options_per_cell():
    spec = parse_spec(spec_doc(base={"loss": {"tau": 0.2}, "model": {"layers": 2},
                                     "train": {"num_negatives": 8, "positives_per_user": 4}},
                               grid={"loss.name": ["bpr", "sl"], "model.name": ["mf", "lightgcn"],
                                     "train.sampler": ["uniform", "in_batch"], "train.batching": ["pairs", "users"]}))
    assert len(spec.cells) == 16
    for cell in spec.cells:
        tree = cell.config.to_dict()
        v = cell.values
        assert ("tau" in tree["loss"]) == (v["loss.name"] == "sl")
        assert ("layers" in tree["model"]) == (v["model.name"] == "lightgcn")
        assert ("num_negatives" in tree["train"]) == (v["train.sampler"] == "uniform")
        assert ("positives_per_user" in tree["train"]) == (v["train.batching"] == "users")
        if v["loss.name"] == "sl":
            assert tree["loss"]["tau"] == 0.2


@pytest.mark.parametrize("doc,key", [
    (spec_doc(base={"loss": {"tau": 0.2}}, grid={"loss.name": ["bpr", "mse"]}), "loss.tau"),
    (spec_doc(base={"model": {"layers": 2}}), "model.layers"),
    (spec_doc(grid={"loss.name": ["bpr", "mse"], "loss.tau": [0.1, 0.2]}), "loss.tau"),
    (spec_doc(base={"train": {"positives_per_user": 4}}, grid={"train.sampler": ["uniform", "in_batch"]}),
     "train.positives_per_user"),
])
def test_sweep_option_that_applies_to_no_cell_is_an_error(doc, key):
    with pytest.raises(ConfigError, match=rf"{key} \(set in .*\) applies to no cell"):
        parse_spec(doc)


def test_sweep_override_that_applies_to_none_of_its_cells_is_an_error():
    doc = spec_doc(grid={"loss.name": ["sl", "bpr"]},
                   overrides=[{"when": {"loss.name": "bpr"}, "set": {"loss.tau": 0.5}}])
    with pytest.raises(ConfigError, match="loss.tau"):
        parse_spec(doc)


# ---------------------------------------------------------------------------- docs/EXTENDING.md, example 1: a loss
@dataclass
class HingeOptions:
    margin: float = option(1.0, "hinge margin m between s⁺ and each s⁻", check=non_negative, flag="--margin")


def hinge(pos, neg, *, users=None, neg_mask=None, margin: float = 1.0):
    """Pairwise hinge: mean_k mean_j relu(m − (s⁺_k − s⁻_kj)).

    Shapes: pos [B], neg [B, M] -> scalar.  ``users`` is ignored.
    """
    _check_shapes(pos, neg, users)
    return (_masked_sum(F.relu(margin - pos[:, None] + neg), neg_mask) / _neg_count(neg, neg_mask)).mean()


def hinge_oracle(pos, neg, mask, margin):
    """Python loops, float64: the mean over rows of the mean over real negatives of max(0, m − s⁺ + s⁻)."""
    rows = []
    for k in range(len(pos)):
        terms = [max(0.0, margin - float(pos[k]) + float(neg[k][j])) for j in range(len(neg[k]))
                 if mask is None or bool(mask[k][j])]
        rows.append(sum(terms) / max(len(terms), 1))
    return sum(rows) / len(rows)


@pytest.fixture
def with_hinge(monkeypatch):
    """LOSSES with "hinge" registered, in a copy restored after the test."""
    monkeypatch.setattr(LOSSES, "_entries", dict(LOSSES._entries))
    LOSSES.register("hinge", HingeOptions)(hinge)
    return LOSSES


def test_hinge_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(7, generator=gen, dtype=torch.float64) * 2 - 1
    neg = torch.rand(7, 5, generator=gen, dtype=torch.float64) * 2 - 1
    mask = torch.rand(7, 5, generator=gen) < 0.7
    for m, margin in [(None, 1.0), (mask, 0.3), (mask, 0.0)]:
        assert float(hinge(pos, neg, neg_mask=m, margin=margin)) == pytest.approx(
            hinge_oracle(pos.tolist(), neg.tolist(), None if m is None else m.tolist(), margin), abs=1e-12)


def test_registered_hinge_is_a_config_a_flag_and_trains_through_the_cli(with_hinge, tmp_path, capsys):
    assert with_hinge.owners("margin")[0] == "ccl" and with_hinge.owners("margin")[-1] == "hinge"
    assert config_from_dict({"loss": {"name": "hinge", "margin": 0.5}}).loss.kwargs() == {"margin": 0.5}
    with pytest.raises(ConfigError, match="loss.tau does not apply to loss.name = 'hinge'"):
        config_from_dict({"loss": {"name": "hinge", "tau": 0.1}})
    flags = {f.flag: f for f in config_flags()}
    assert "hinge" in flags["--loss"].help
    assert flags["--margin"].help == ("loss ccl: CCL margin m on negative cosine scores (default 0.8); hinge: hinge "
                                      "margin m between s⁺ and each s⁻ (default 1.0)")  # each loss's own default
    train, test = write_tiny_data(tmp_path / "data")
    code = main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}", "--loss", "hinge",
                 "--margin", "0.5", "--epochs", "1", "--negatives", "8", "--batch-size", "64", "--device", "cpu",
                 "--dim", "8", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["loss"] == {"name": "hinge", "margin": 0.5}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["recall@20"] >= 0


def test_hinge_is_gone_after_the_test():
    assert "hinge" not in LOSSES


# ---------------------------------------------------------------------------- example 2: a model with an auxiliary loss
@dataclass
class NormMFOptions(ModelOptions):
    norm_weight: float = option(0.1, "weight of the mean squared norm of the batch's user embeddings",
                                check=non_negative, flag="--norm-weight")


class NormMF(MF):
    """MF plus an auxiliary loss w · mean_k ‖e_{u_k}‖² on the batch's users."""

    def __init__(self, n_users, n_items, options: NormMFOptions, generator, fused):
        super().__init__(n_users, n_items, options.dim, options.score, options.dropout, generator, fused)
        self.norm_weight = options.norm_weight

    def extra_loss(self, users, items):
        return self.norm_weight * self.user_emb[users].pow(2).sum(dim=1).mean()


def make_norm_mf(train, options: NormMFOptions, generator, fused):
    """MF with a norm penalty on the batch's users (an extra_loss example)."""
    return NormMF(train.n_users, train.n_items, options, generator, fused)


def test_registered_model_adds_its_extra_loss(monkeypatch, tmp_path):
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    MODELS.register("norm_mf", NormMFOptions)(make_norm_mf)
    assert "norm_mf" in {f.flag: f for f in config_flags()}["--model"].help
    with pytest.raises(ConfigError, match="model.norm_weight does not apply to model.name = 'mf'"):
        config_from_dict({"model": {"name": "mf", "norm_weight": 0.1}})
    cfg = tiny_config(tmp_path, model={"name": "norm_mf", "norm_weight": 0.5}, train={"epochs": 1})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    with_aux = Trainer(cfg, data, torch.device("cpu"))
    plain = Trainer(cfg.with_overrides({"model.norm_weight": 0.0}), data, torch.device("cpu"))
    users, items = with_aux.users[:16], with_aux.items[:16]
    neg = with_aux.sampler(users, items, torch.Generator().manual_seed(0))
    aux = 0.5 * with_aux.model.user_emb[users].pow(2).sum(dim=1).mean()
    loss_aux, loss_plain = (float(t.step(users, items, neg)[0].detach()) for t in (with_aux, plain))
    assert loss_aux == pytest.approx(loss_plain + float(aux.detach()))
    assert float(aux.detach()) > 0
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    assert summary.metrics["epochs_run"] == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["norm_weight"] == 0.5


# ---------------------------------------------------------------------------- example 3: a sampler
class UniformOtherSampler:
    """M items uniform over all items except the pair's own positive (with replacement)."""

    name = "uniform_other"

    def __init__(self, n_items: int, num_negatives: int) -> None:
        self.n_items, self.num_negatives = n_items, num_negatives

    def __call__(self, users, pos_items, generator):
        draw = torch.randint(0, self.n_items - 1, (users.shape[0], self.num_negatives), generator=generator,
                             device=users.device)
        return draw + (draw >= pos_items[:, None]).long()  # skip the positive: uniform over the other n − 1


def make_uniform_other(train, options: NegativesOptions, device):
    """Uniform over the items other than the pair's positive."""
    return UniformOtherSampler(train.n_items, options.num_negatives)


def test_registered_sampler_builds_and_never_returns_the_positive(monkeypatch, tmp_path):
    monkeypatch.setattr(SAMPLERS, "_entries", dict(SAMPLERS._entries))
    SAMPLERS.register("uniform_other", NegativesOptions)(make_uniform_other)
    flags = {f.flag: f for f in config_flags()}
    assert "uniform_other" in flags["--sampler"].help and "uniform_other" in flags["--negatives"].help
    cfg = tiny_config(tmp_path, train={"sampler": "uniform_other", "num_negatives": 50})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    sampler = build_sampler("uniform_other", train=data.train, options=cfg.train.sampler_options)
    users = torch.zeros(400, dtype=torch.long)
    pos = torch.full((400,), 3)
    neg = sampler(users, pos, torch.Generator().manual_seed(0))
    assert neg.shape == (400, 50) and not (neg == 3).any()
    assert set(neg.unique().tolist()) == set(range(data.train.n_items)) - {3}
    assert Trainer(cfg, data, torch.device("cpu")).epoch()[0].isfinite()


def test_closest_suggests_near_misses_only():
    """A near miss gets a suggestion; an unrelated word ('fast' for the scorers) gets none."""
    from rankrobust.registry import closest

    scorers = ["auto", "gather", "sparse", "dense"]
    assert closest("sprase", scorers) == " (did you mean 'sparse'?)"
    assert closest("fast", scorers) == ""


# ---------------------------------------------------------------------------- option defaults live in the options class
def _signature_disagreements(fn, options: type, where: str) -> list[str]:
    """'where: key = signature default vs options default' for every keyword of ``fn`` that is an option of
    ``options`` and carries a default other than the option's (no default, or the same one, is fine)."""
    import inspect

    from rankrobust.registry import field_default

    defaults = {f.name: field_default(f) for f in dataclasses.fields(options)}
    found = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in defaults and p.default is not p.empty and p.default != defaults[p.name]:
            found.append(f"{where}: {p.name} = {p.default!r} in the signature, {defaults[p.name]!r} in "
                         f"{options.__name__}")
    return found


def _model_constructors(entry):
    """The ``__init__`` of every class of the model ``entry`` builds (its MRO below ``torch.nn.Module``)."""
    from rankrobust.data.interactions import Interactions

    train = Interactions.from_pairs([0, 0, 1], [0, 1, 2], n_users=2, n_items=4)
    model = entry.target(train, entry.make_options(), torch.Generator().manual_seed(0), False)
    stop = type(model).__mro__.index(torch.nn.Module)
    return [(cls.__name__, cls.__init__) for cls in type(model).__mro__[:stop] if "__init__" in vars(cls)]


def test_signature_defaults_equal_the_options_defaults():
    """One home for an option's default: the options class.  A registered loss function, a model factory and
    the constructors of the model it builds carry either no default for an option keyword or the same one
    (the 33 keyword defaults of the loss functions, ``dim = 64`` of `Recommender`, ``layers`` of LightGCN…)."""
    found = []
    for entry in LOSSES.entries():
        found += _signature_disagreements(entry.target, entry.options, f"loss {entry.name}")
    for entry in MODELS.entries():
        found += _signature_disagreements(entry.target, entry.options, f"model {entry.name}")
        for cls, init in _model_constructors(entry):
            found += _signature_disagreements(init, entry.options, f"model {entry.name} ({cls}.__init__)")
    assert not found, "\n".join(found)


def test_signature_check_finds_a_disagreeing_default():
    """The check above fails on a loss whose signature says margin = 0.5 while its options say 1.0."""

    def hinge_half(pos, neg, *, users=None, neg_mask=None, margin: float = 0.5):
        return hinge(pos, neg, neg_mask=neg_mask, margin=margin)

    def hinge_bare(pos, neg, *, users=None, neg_mask=None, margin: float):
        return hinge(pos, neg, neg_mask=neg_mask, margin=margin)

    assert _signature_disagreements(hinge_half, HingeOptions, "loss h") == [
        "loss h: margin = 0.5 in the signature, 1.0 in HingeOptions"]
    assert _signature_disagreements(hinge_bare, HingeOptions, "loss h") == []
    assert _signature_disagreements(hinge, HingeOptions, "loss h") == []
