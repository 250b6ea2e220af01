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
    with pytest.warns(FutureWarning, match="`his` is deprecated"):
        assert from_dict(Stage, {"his": 4}).recipe.history == 4
    with pytest.raises(ConfigError, match="override len_action=ten: cannot read 'ten' as int"), \
            pytest.warns(FutureWarning):
        load_config(Stage, overrides=["len_action=ten"])  # the old key is read as the new field's type


# -- the stage configs -------------------------------------------------------------------------------
def stage_configs() -> list[type]:
    from worldvla.data.conversations import ConversationsConfig
    from worldvla.data.pretokenize import PretokenizeConfig
    from worldvla.demo import DemoConfig
    from worldvla.eval.config import EvalConfig
    from worldvla.eval.imagine import ImagineConfig
    from worldvla.eval.open_loop import OpenLoopConfig
    from worldvla.serve.server import ServeConfig
    from worldvla.train.config import TrainConfig

    return [ConversationsConfig, PretokenizeConfig, TrainConfig, EvalConfig, ServeConfig, DemoConfig, ImagineConfig,
            OpenLoopConfig]


# Fields of a stage config named like a Recipe field on purpose, each with the reason.
ALLOWED = {
    ("EvalConfig", "resolution"): "rollout override: the render resolution (a protocol deviation, reported)",
    ("EvalConfig", "history"): "rollout override: frames per query (a protocol deviation, reported)",
    ("ModelOptions", "action_head"): "another knob: whether training attaches the continuous head (a bool)",
    ("TrainOptions", "lora"): "the LoRA settings of the run; Recipe.lora is their record in the checkpoint",
}


def sections(cls) -> list[type]:
    """`cls` and every config section below it (the Recipe itself excluded)."""
    import typing

    from worldvla.config import _section_type

    found = [cls]
    for tp in typing.get_type_hints(cls).values():
        section = _section_type(tp)
        if section is not None and section is not Recipe and section not in found:
            found += sections(section)
    return found


def test_no_stage_config_redeclares_a_recipe_field():
    recipe_fields = set(Recipe.__dataclass_fields__)
    seen, clashes = set(), []
    for root in stage_configs():
        for cls in sections(root):
            for name in cls.__dataclass_fields__:
                seen.add((cls.__name__, name))
                if name in recipe_fields and (cls.__name__, name) not in ALLOWED:
                    clashes.append(f"{cls.__name__}.{name}")
    assert clashes == [], f"these fields copy the Recipe's: nest `recipe: Recipe` instead: {clashes}"
    assert set(ALLOWED) <= seen, f"allow-listed fields that no longer exist: {sorted(set(ALLOWED) - seen)}"


def test_the_stages_hold_the_recipe_itself():
    import typing

    from worldvla.data.conversations import ConversationsConfig
    from worldvla.data.pretokenize import TokenizerOptions
    from worldvla.train.config import DataOptions

    for cls in (ConversationsConfig, TokenizerOptions, DataOptions):
        assert typing.get_type_hints(cls)["recipe"] is Recipe, cls


def sample_value(root, new_key: str) -> str:
    """A value for the field at `new_key` of `root` other than its default, as CLI text."""
    leaf = new_key.split(".")[-1]
    if leaf in ("with_state", "with_wrist"):
        node = root()
        for part in new_key.split("."):
            node = getattr(node, part)
        return str(not node).lower()
    return {"chunk_size": "7", "history": "3", "resolution": "96", "action_stats": "rynnvla_action",
            "world_action_stats": "worldvla", "state_stats": "worldvla",
            "tokenizer": "some/tokenizer", "path": "some/checkpoint", "recipe": "{chunk_size: 10, action_stats: worldvla}",
            "action_mode": "continuous"}[leaf]


def renamed_keys() -> list[tuple[type, str, str]]:
    """(root config, old dotted key, new dotted key) for every `renamed` entry of every stage config."""
    import typing

    out = []

    def walk(cls, prefix, root):
        for old, new in getattr(cls, "renamed", {}).items():
            out.append((root, prefix + old, prefix + new))
        for name, tp in typing.get_type_hints(cls).items():
            from worldvla.config import _section_type

            section = _section_type(tp)
            if section is not None and section is not Recipe:
                walk(section, f"{prefix}{name}.", root)

    for root in stage_configs():
        walk(root, "", root)
    return out


@pytest.mark.parametrize("root, old, new", renamed_keys(), ids=lambda x: getattr(x, "__name__", x))
def test_old_keys_still_load_to_the_same_values_with_a_note(root, old, new):
    value = sample_value(root, new)
    got, notes = loaded(root, None, [f"{old}={value}"])
    want, none = loaded(root, None, [f"{new}={value}"])
    assert got == want and got != root() and none == []
    assert notes == [f"override {old}: `{old}` is deprecated, write `{new}`"]


def test_the_keys_of_before_load_from_yaml_files(tmp_path):
    from worldvla.eval.config import EvalConfig
    from worldvla.train.config import TrainConfig

    old = tmp_path / "old.yaml"
    old.write_text("data:\n  chunk_size: 10\n  resolution: 512\n  world_action_stats: ''\n  with_state: true\n")
    new = tmp_path / "new.yaml"
    new.write_text("data:\n  recipe: {chunk_size: 10, resolution: 512, with_state: true}\n")
    (got, notes), (want, none) = loaded(TrainConfig, old), loaded(TrainConfig, new)
    assert got == want and none == [] and len(notes) == 4
    assert notes[0] == f"{old}: `data.chunk_size` is deprecated, write `data.recipe.chunk_size`"
    assert got.data.recipe.world_action_stats is None  # "" was the old spelling of "same as action_stats"
    old.write_text("policy: ckpt\ntokenizer: tok\npolicy_settings: {chunk_size: 10}\naction_mode: continuous\n")
    cfg, notes = loaded(EvalConfig, old, ["policy=other"])  # the shorthand keeps the section's other keys
    assert (cfg.policy.path, cfg.policy.tokenizer, cfg.policy.recipe) == (
        "other", "tok", {"chunk_size": 10, "action_mode": "continuous"})
    assert len(notes) == 3


@pytest.mark.parametrize("stage, override, named", [
    ("train", "data.source=jsonl", "data.source: 'jsonl' not one of ['shards', 'conversations']"),
    ("train", "data.kinds=[action,reward]", "data.kinds[1]: 'reward' not one of ['action', 'world']"),
    ("train", "data.recipe.family=openvla", "data.recipe.family: 'openvla' not one of ['worldvla', 'rynnvla002']"),
    ("conversations", "recipe.action_mode=regression", "recipe.action_mode: 'regression' not one of"),
    ("eval", "decode.mode=fastest", "decode.mode: 'fastest' not one of ['auto', 'parallel', 'sequential'"),
    ("eval", "videos=sometimes", "videos: 'sometimes' not one of ['none', 'failures', 'all']"),
    ("eval", "policy.recipe={action_mode: regression}", "policy.recipe.action_mode: 'regression' not one of"),
    ("serve", "protocol=grpc", "protocol: 'grpc' not one of ['worldvla', 'openpi', 'vla-eval']"),
])
def test_stage_choices_reject_a_bad_value_in_one_line(stage, override, named):
    root = dict(zip(("conversations", "pretokenize", "train", "eval", "serve"), stage_configs()))[stage]
    with pytest.raises(ValueError) as err:
        load_config(root, None, [override])
    assert named in str(err.value) and "\n" not in str(err.value)


# -- one processor for training and inference --------------------------------------------------------
def test_training_and_inference_tokenise_through_one_processor(tiny_assets):
    """A training record's sequence starts with exactly the query the policy sends for the same frames and
    state, and its action blocks are the bins the policy de-normalises: both come from the Recipe's Processor
    (action and world samples binned with their own statistics)."""
    import numpy as np

    from worldvla.data.processor import Processor
    from worldvla.data.sequence import action_conversation, world_conversation
    from worldvla.data.tokenization import SampleTokenizer

    recipe = Recipe(chunk_size=2, history=2, resolution=64, action_stats="rynnvla_action",
                    world_action_stats="worldvla", with_state=True).with_tokenizer(tiny_assets.root)
    training = SampleTokenizer(recipe, tiny_assets.root)
    inference = Processor.from_folder(recipe, tiny_assets.root)
    assert isinstance(training.processor, Processor)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    state, actions = rng.uniform(-1, 1, 8), rng.uniform(-0.5, 0.5, (2, 7))
    record = {"conversations": action_conversation("pick it up", 2, 2, 1), "image": frames, "action": list(actions),
              "state": [state]}
    sample, kind = training.build(record, prefetch=False)
    prompt = inference.action_prompt("pick it up", frames, state=state)
    assert kind == "action" and sample.input_ids[:len(prompt)] == prompt
    blocks = [ids for ids in (inference.action.encode_block(a) for a in actions)]
    assert sample.input_ids[len(prompt):len(prompt) + 2 * len(blocks[0])] == blocks[0] + blocks[1]
    world = {"conversations": world_conversation(1), "image": frames, "action": [actions[0]]}
    wsample, kind = training.build(world, prefetch=False)
    wprompt = inference.world_prompt(frames[0], actions[0])
    assert kind == "world" and wsample.input_ids[:len(wprompt)] == wprompt
    assert inference.world_action.encode_block(actions[0]) != inference.action.encode_block(actions[0])


def test_the_policy_is_a_recipe_a_processor_and_weights(tiny_assets, tmp_path):
    from worldvla.data.processor import Processor
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.testing.tiny_model import one_torch_thread, write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets, chunk_size=3, resolution=64)
    with one_torch_thread():
        policy = WorldVLAPolicy.from_pretrained(ckpt, chunk_size=2)
    assert isinstance(policy.processor, Processor) and policy.settings is policy.processor.recipe
    assert policy.settings.differing(Recipe.from_file(ckpt / "worldvla.json").replace(chunk_size=2)) == []
    assert policy.action_tok is policy.processor.action and policy.images is policy.processor.images


@pytest.mark.parametrize("override", ["data.batching=sorted", "train.precision=fp16", "train.loss_form=mean",
                                      "train.save_dtype=float16", "logging.wandb_mode=cloud", "train.lora.merge=never",
                                      "train.lora.target_modules=[q_proj,lm_head]"])
def test_every_training_choice_is_a_literal_checked_by_the_loader(override):
    from worldvla.train.config import TrainConfig

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"\b{key}(\[1\])?: '\w+' not one of \[") as err:
        load_config(TrainConfig, None, [override])
    assert "\n" not in str(err.value)
