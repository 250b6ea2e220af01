"""Issue 23, item 7: frames that are not at the model resolution (LeRobot datasets at 96 x 128) are resized on
request, in the LeRobot import (`resize=N`) and in pretokenize (`tokenizer.resize=true`), as RynnVLA-002's
LeRobot path does: PIL bicubic to the square resolution, no crop. Without the option they are refused, naming it."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from worldvla.data.lerobot import LeRobotError, LeRobotImportConfig, convert
from worldvla.recipe import Recipe

pytestmark = pytest.mark.usefixtures("single_torch_thread")
REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "lerobot" / "lr_v21_0"
KEYS = ("observation.images.image", "observation.images.wrist_image")
RES = 64


def _import(out, **kw):
    return convert(LeRobotImportConfig(input=FIXTURE, out=out, episodes="1", front_key=KEYS[0], wrist_key=KEYS[1],
                                       stats=False, **kw))


def test_lerobot_import_resizes_both_cameras_with_pil_bicubic(tmp_path):
    _import(tmp_path / "asis")
    _import(tmp_path / "small", resize=RES)
    with h5py.File(tmp_path / "asis" / "episode_000001.hdf5") as a, h5py.File(tmp_path / "small" / "episode_000001.hdf5") as b:
        for name in ("front_image", "wrist_image"):
            full, small = a["obs"][name][()], b["obs"][name][()]
            assert full.shape[1:3] == (256, 256) and small.shape == (len(full), RES, RES, 3)
            want = np.asarray(Image.fromarray(full[3]).resize((RES, RES), Image.BICUBIC))
            np.testing.assert_array_equal(small[3], want)
    res = _import(tmp_path / "small", resize=RES)  # a rerun with the same size skips the episode
    assert res.skipped == [1]
    res = _import(tmp_path / "small", resize=2 * RES)  # another size writes it again
    assert res.written == [1]
    with pytest.raises(LeRobotError, match=r"resize=100: use 0 .* a multiple of 32"):
        _import(tmp_path / "bad", resize=100)


@pytest.fixture(scope="module")
def wide_convs(tmp_path_factory):
    """1 trajectory x 2 frames at 96 x 128 px (a LeRobot camera), action conversations K=1."""
    from worldvla.data.conversations import ConversationsConfig, generate

    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    trj = root / "exp" / "put_the_bowl_on_the_stove" / "trj_0"
    for d in ("action", "imgs"):
        (trj / d).mkdir(parents=True)
    for j in range(2):
        np.save(trj / "action" / f"action_{j}.npy", rng.uniform(-0.9, 0.9, 7))
        img = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # 96 x 128
        Image.fromarray(img).save(trj / "imgs" / f"image_{j}.png")
    files = generate(ConversationsConfig(base_dir=root / "exp", output_dir=root / "convs", train_ratio=1.0, recipe=Recipe(history=1, chunk_size=1)))
    return root / "exp", files["train"]["action"]


def test_pretokenize_refuses_other_sizes_and_resizes_on_request(wide_convs, tiny_assets, image_tokenizer, tmp_path):
    from worldvla.data.pretokenize import PretokenizeConfig, TokenizerOptions, pretokenize
    from worldvla.data.sequence import RecordError
    from worldvla.data.shards import ShardReader
    from worldvla.tokenizers import ImageTokenizer, codes_to_tokens

    exp, convs = wide_convs

    def cfg(out, **tok):
        return PretokenizeConfig(inputs=[convs], out_dir=out, tokenizer=TokenizerOptions(
            path=tiny_assets.root, recipe=Recipe(resolution=RES), **tok))

    refused = r"frame is 128x96 px, the model resolution is 64: resize it .* tokenizer.resize=true \(pretokenize\)"
    with pytest.raises(RecordError, match=refused):
        pretokenize(cfg(tmp_path / "refused"))
    pretokenize(cfg(tmp_path / "resized", resize=True))
    sample = ShardReader(tmp_path / "resized" / "shards" / "shard_00000").sample(0)
    frame = np.asarray(Image.open(exp / "put_the_bowl_on_the_stove" / "trj_0" / "imgs" / "image_0.png").convert("RGB"))
    small = np.asarray(Image.fromarray(frame).resize((RES, RES), Image.BICUBIC))
    tok = ImageTokenizer(image_tokenizer.vqgan, image_tokenizer.vocab, RES)
    want = codes_to_tokens(tok.encode([small])[0], tok.vocab)
    ids = sample.input_ids
    assert any(ids[i: i + len(want)] == want for i in range(len(ids) - len(want) + 1))


def test_on_the_fly_training_data_resizes_as_pretokenize(wide_convs, tiny_assets, tmp_path):
    from worldvla.data.datasets import OnTheFlyDataset
    from worldvla.data.pretokenize import PretokenizeConfig, TokenizerOptions, pretokenize
    from worldvla.data.sequence import RecordError
    from worldvla.data.shards import ShardReader

    _, convs = wide_convs
    opts = TokenizerOptions(path=tiny_assets.root, recipe=Recipe(resolution=RES), resize=True)
    pretokenize(PretokenizeConfig(inputs=[convs], out_dir=tmp_path / "set", tokenizer=opts))
    shard = ShardReader(tmp_path / "set" / "shards" / "shard_00000")
    fly = OnTheFlyDataset([convs], opts.recipe.with_tokenizer(tiny_assets.root), tiny_assets.root, resize=True)
    assert [fly[i].input_ids for i in range(len(fly))] == [shard.sample(i).input_ids for i in range(len(shard))]
    with pytest.raises(RecordError, match="data.resize=true"):
        OnTheFlyDataset([convs], opts.recipe.with_tokenizer(tiny_assets.root), tiny_assets.root)[0]
