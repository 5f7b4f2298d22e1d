from pathlib import Path

import pytest

from fopro_edge.config import Recipe, load_recipe, recipe_from_dict
from fopro_edge.errors import ConfigError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def _err(raw: dict, *overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(raw, overrides, source="r.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("r.yaml: ") or msg.startswith("--set")
    return msg


def test_defaults_reproduce_the_method():
    r = recipe_from_dict({})
    assert r.distill.method == "fopro"
    assert r.distill.align_weight == 3.0 and r.optim.lr == 3e-4 and r.optim.grad_clip == 5.0
    assert r.optim.name == "adam" and r.data.batch_size == 32


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    r = load_recipe(path, check_paths=False)
    assert isinstance(r, Recipe)


def test_unknown_key_suggests_the_right_one():
    msg = _err({"distill": {"epoch": 3}})
    assert "distill.epoch: unknown key (did you mean 'epochs'?)" in msg


def test_unknown_section():
    assert "techer: unknown key (did you mean 'teacher'?)" in _err({"techer": {}})


def test_wrong_type():
    assert "data.batch_size: expected an integer" in _err({"data": {"batch_size": "big"}})
    assert "data.batch_size: expected an integer" in _err({"data": {"batch_size": True}})
    assert "prompt.conditional: expected true or false" in _err({"prompt": {"conditional": "yes"}})


def test_out_of_range():
    assert "optim.lr: 0.0 is out of range (must be > 0" in _err({"optim": {"lr": 0}})
    assert "distill.epochs: 0 is out of range" in _err({"distill": {"epochs": 0}})


def test_bad_choice_suggests():
    msg = _err({"distill": {"method": "ekd_fpg"}})
    assert "distill.method: 'ekd_fpg' is not allowed (did you mean 'ekd+fpg'?" in msg


def test_missing_path_names_the_key(tmp_path):
    msg = _err({"data": {"source": "folder", "root": str(tmp_path / "nope")}})
    assert "data.root: path not found" in msg


def test_cross_field_rules():
    assert "data.root: required when data.source is 'folder'" in _err({"data": {"source": "folder"}})
    assert "data.train_csv: required" in _err({"data": {"source": "csv"}})
    assert "distill.akd.start_epoch: 5 must be < distill.epochs = 5 (AKD would never run)" in _err(
        {"distill": {"epochs": 5, "akd": {"start_epoch": 5}}})
    recipe_from_dict({"distill": {"method": "ekd", "epochs": 5, "akd": {"start_epoch": 5}}})  # no AKD: no rule


def test_logit_adjust_takes_a_number_or_auto():
    assert recipe_from_dict({}).eval.logit_adjust == 0.0
    assert recipe_from_dict({"eval": {"logit_adjust": 1}}).eval.logit_adjust == 1.0
    assert recipe_from_dict({}, ["eval.logit_adjust=auto"]).eval.logit_adjust == "auto"
    assert "eval.logit_adjust: -0.5 is out of range (must be >= 0.0)" in _err({"eval": {"logit_adjust": -0.5}})
    assert "eval.logit_adjust: 'atuo' is not allowed (did you mean 'auto'?" in _err({"eval": {"logit_adjust": "atuo"}})
    assert "eval.logit_adjust: expected a number, got None" in _err({"eval": {"logit_adjust": None}})


def test_overrides_apply_and_validate():
    r = recipe_from_dict({}, ["distill.method=bsm", "data.batch_size=8", "teacher.strip_prefixes=[a.]"])
    assert r.distill.method == "bsm" and r.data.batch_size == 8 and r.teacher.strip_prefixes == ["a."]
    assert "distill.epochz: unknown key" in _err({}, "distill.epochz=3")
    with pytest.raises(ConfigError, match="expected key=value"):
        recipe_from_dict({}, ["distill.epochs"])


def test_recipe_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: line .*not valid YAML"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"empty.yaml: the recipe is empty"):
        load_recipe(empty)
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"model.yaml: not a UTF-8 text file \(byte 0\)") as e:
        load_recipe(binary)
    assert "\n" not in str(e.value)


def test_relative_paths_resolve_against_the_recipe(tmp_path):
    (tmp_path / "imgs").mkdir()
    f = tmp_path / "r.yaml"
    f.write_text("data: {source: folder, root: imgs}\n")
    assert load_recipe(f).data.root == str((tmp_path / "imgs").resolve())


def test_exponent_without_dot_is_a_number():
    assert recipe_from_dict({"optim": {"lr": "1e-3"}}, ["distill.explore.lr=3e-4"]).distill.explore.lr == 3e-4
    assert "optim.lr: expected a number, got 'fast'" in _err({"optim": {"lr": "fast"}})
