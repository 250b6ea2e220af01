"""SequenceBuilder against sequences assembled by hand from official_format.md §1.4, §2, §4."""

import json

import numpy as np
import pytest

from worldvla.data.sequence import (
    RecordError,
    SequenceBuilder,
    action_conversation,
    world_conversation,
)
from worldvla.tokenizers import ImageTokenizer

IGN = -100


def _hand_image(codes, tokenizer_json, grids):
    """boi, h-size, w-size, rows of (ids from the IMGIMG names + 8803), eoi; ids read from the JSON."""
    from worldvla.vocab import image_name_from_code

    vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]
    out = [8197, 8804 + grids, 8804 + grids]
    for row in codes:
        out += [vocab[image_name_from_code(int(c))] for c in row] + [8803]
    return out + [8196]


def _hand_action(a, lo, hi):
    norm = np.clip(2 * (a - lo) / (hi - lo + 1e-8) - 1, -1, 1)
    return [10004] + (np.digitize(norm, np.linspace(-1, 1, 256)) + 10005).tolist() + [15004]


@pytest.fixture(scope="module", params=[256, 512])
def setup(request, tiny_assets, text_tokenizer):
    res = request.param
    itok = ImageTokenizer.from_files(tiny_assets.vqgan_yaml, tiny_assets.vqgan_ckpt, text_tokenizer.vocab, res)
    return res, itok, SequenceBuilder(text_tokenizer, itok.image_to_tokens)


def test_action_model_sample(setup, tiny_assets, text_tokenizer, tmp_path):
    res, itok, builder = setup
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(2, res, res, 3), dtype=np.uint8)
    acts = rng.uniform(-1, 1, size=(5, 7))
    for i, a in enumerate(acts):  # official record: .npy action files and PNG images
        np.save(tmp_path / f"action_{i}.npy", a)
    from PIL import Image

    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"image_{i}.png")
    record = {
        "conversations": action_conversation("open the top drawer of the cabinet", 2, 5),
        "image": [str(tmp_path / "image_0.png"), str(tmp_path / "image_1.png")],
        "action": [f"action_{i}.npy" for i in range(5)],
    }
    sample = builder.build({**record, "action": [str(tmp_path / f"action_{i}.npy") for i in range(5)]})

    lo = np.array([-0.9375, -0.9375, -0.9375, -0.32571429, -0.375, -0.375, -1.0])
    hi = np.array([0.9375, 0.9375, 0.9375, 0.375, 0.375, 0.375, 1.0])
    grids = res // 32
    codes = itok.encode(list(imgs))
    question = text_tokenizer.encode("What action should the robot take to open the top drawer of the cabinet?")
    prompt = [0] + question + _hand_image(codes[0], tiny_assets.tokenizer_json, grids) + \
        _hand_image(codes[1], tiny_assets.tokenizer_json, grids) + [8710]
    answer = sum((_hand_action(a, lo, hi) for a in acts), []) + [8710]
    assert sample.input_ids == prompt + answer
    assert sample.labels == [IGN] * len(prompt) + answer
    assert len(answer) == 9 * 5 + 1
    per_image = 276 if res == 256 else 1060
    assert [(s.kind, s.end - s.start) for s in sample.spans] == [("image", per_image)] * 2 + [("action", 9)] * 5
    first_action = sample.spans_of("action")[0]
    assert sample.input_ids[first_action.start] == 10004 and sample.input_ids[first_action.end - 1] == 15004

    # relative media paths resolve against base_dir
    rel = builder.build({**record, "image": ["image_0.png", "image_1.png"]}, base_dir=tmp_path)
    assert rel.input_ids == sample.input_ids

    # the generation prompt is the human turn only, ending with 8710
    prompt_only = builder.build({**record, "image": ["image_0.png", "image_1.png"]}, training=False, base_dir=tmp_path)
    assert prompt_only.input_ids == prompt


def test_world_model_sample(setup, tiny_assets, text_tokenizer):
    res, itok, builder = setup
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, size=(2, res, res, 3), dtype=np.uint8)
    act = rng.uniform(-1, 1, size=7)
    sample = builder.build({"conversations": world_conversation(1), "image": list(imgs), "action": [act]})
    grids = res // 32
    codes = itok.encode(list(imgs))
    lo = np.array([-0.9375, -0.9375, -0.9375, -0.32571429, -0.375, -0.375, -1.0])
    hi = -lo.copy()
    hi[3] = 0.375
    text = text_tokenizer.encode(
        "Generate the next image based on the provided sequence of historical images and corresponding actions."
    )
    prompt = [0] + text + _hand_image(codes[0], tiny_assets.tokenizer_json, grids) + _hand_action(act, lo, hi) + [8710]
    target = _hand_image(codes[1], tiny_assets.tokenizer_json, grids) + [8710]
    assert sample.input_ids == prompt + target
    assert sample.labels == [IGN] * len(prompt) + target


def test_record_errors(setup):
    _, _, builder = setup
    conv = action_conversation("x", 2, 1)
    with pytest.raises(RecordError, match="more image placeholders"):
        builder.build({"conversations": conv, "image": [], "action": [np.zeros(7)]}, name="trj_3/7")
    with pytest.raises(RecordError, match=r"record trj_3/7: action 0.*NaN"):
        bad = np.zeros(7)
        bad[2] = np.nan
        builder.build({"conversations": action_conversation("x", 0, 1), "action": [bad]}, name="trj_3/7")
    with pytest.raises(RecordError, match="missing 'conversations'"):
        builder.build({})
    with pytest.raises(RecordError, match="action 0"):
        builder.build({"conversations": action_conversation("x", 0, 1), "action": ["/no/such/action.npy"]})
