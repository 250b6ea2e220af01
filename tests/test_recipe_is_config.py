"""One knob, one name: choices are Literal types checked by the config loader, and old keys keep loading
through each config class's `renamed` table with a one-line deprecation note."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

from worldvla.config import ConfigError, from_dict, load_config
from worldvla.errors import InputFileError
from worldvla.recipe import Recipe


def loaded(cls, path=None, overrides=()):
    """(config, deprecation notes) of load_config."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(cls, path, list(overrides))
    return cfg, [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


# -- Literal choices ---------------------------------------------------------------------------------
@dataclass
class Inner:
    mode: Literal["a", "b"] = "a"
    kinds: list[Literal["x", "y"]] = field(default_factory=lambda: ["x"])


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    pick: Literal["p", "q"] | None = None


@pytest.mark.parametrize("override, named", [("inner.mode=c", "inner.mode: 'c' not one of ['a', 'b']"),
                                             ("inner.kinds=[x,z]", "inner.kinds[1]: 'z' not one of ['x', 'y']"),
                                             ("pick=r", "pick: 'r' not one of ['p', 'q']")])
def test_a_bad_choice_is_one_line_naming_the_field(override, named):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, overrides=[override])
    assert named in str(err.value) and "\n" not in str(err.value)
    good = load_config(Outer, overrides=["inner.mode=b", "inner.kinds=[y]", "pick=q"])
    assert (good.inner.mode, good.inner.kinds, good.pick) == ("b", ["y"], "q")


def test_a_bad_choice_in_a_yaml_file_names_the_file_and_field(tmp_path):
    from worldvla.eval.config import EvalConfig

    path = tmp_path / "eval.yaml"
    path.write_text("decode: {mode: fastest}\n")
    with pytest.raises(ConfigError, match=r"eval.yaml.decode.mode: 'fastest' not one of \['auto', 'parallel'"):
        load_config(EvalConfig, path)


def test_recipe_choices_are_checked_on_construction_and_in_worldvla_json(tmp_path):
    with pytest.raises(ValueError, match=r"^family: 'openvla' not one of \['worldvla', 'rynnvla002'\]$"):
        Recipe(family="openvla")
    with pytest.raises(ValueError, match="^action_mode: 'regression' not one of"):
        Recipe().replace(action_mode="regression")
    path = tmp_path / "worldvla.json"
    path.write_text(json.dumps({"chunk_size": 5, "action_mode": "regression"}))
    with pytest.raises(InputFileError, match=r"worldvla.json: action_mode: 'regression' not one of") as err:
        Recipe.from_file(path)
    assert err.value.field == "action_mode"


# -- renamed keys ------------------------------------------------------------------------------------
@dataclass
class Knobs:
    history: int = 2
    chunk_size: int = 5


@dataclass
class Stage:
    renamed: ClassVar[dict[str, str]] = {"his": "recipe.history", "len_action": "recipe.chunk_size"}
    recipe: Knobs = field(default_factory=Knobs)
    name: str = ""


def test_old_keys_move_to_their_new_place_with_a_note(tmp_path):
    path = tmp_path / "stage.yaml"
    path.write_text("his: 3\nname: s\n")
    cfg, notes = loaded(Stage, path, ["len_action=10"])
    assert (cfg.recipe.history, cfg.recipe.chunk_size, cfg.name) == (3, 10, "s")
    assert notes == [f"{path}: `his` is deprecated, write `recipe.history`",
                     "override len_action: `len_action` is deprecated, write `recipe.chunk_size`"]
    new, none = loaded(Stage, None, ["recipe.history=3", "recipe.chunk_size=10", "name=s"])
    assert new == cfg and none == []
    assert from_dict(Stage, {"his": 4}).recipe.history == 4
    with pytest.raises(ConfigError, match="override len_action=ten: cannot read 'ten' as int"):
        load_config(Stage, overrides=["len_action=ten"])  # the old key is read as the new field's type
