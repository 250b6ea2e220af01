"""World-model imagination: batching equals one-at-a-time; the CLI writes strips, GIFs, table, plots."""

import json

import numpy as np
import pytest
from PIL import Image

from worldvla.eval.imagine import imagine_batch, imagine_views, main, world_prompt

R = 128  # tiny checkpoints run at 128 px in these tests


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def policy(tiny_assets, tmp_path_factory):
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("imagine_ckpt"), tiny_assets, resolution=R)  # 8x8 codes: fast
    return WorldVLAPolicy.from_pretrained(ckpt), ckpt


def test_batched_equals_one_at_a_time(policy):
    pol, _ = policy
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, R, R, 3), dtype=np.uint8)
    actions = rng.uniform(-0.5, 0.5, size=(3, 2, 7))
    both = imagine_batch(pol, list(frames), actions, feed_back="tokens")
    assert both.shape == (3, 2, R, R, 3)
    for i in range(3):
        one = imagine_batch(pol, [frames[i]], actions[i : i + 1], feed_back="tokens")
        assert np.array_equal(one[0], both[i])
    # the first imagined frame equals the policy's single-step world model
    assert np.array_equal(pol.imagine(frames[0], actions[0, 0]), both[0, 0])


def test_bi_view_rollout_batched_and_against_the_decoder(policy):
    """Third-person + wrist: two next images per step; batching changes nothing; step 1 is exactly
    the constrained two-image decode of the bi-view world prompt."""
    from worldvla.model.image_decode import generate_image, split_image_spans
    from worldvla.tokenizers.image import tokens_to_codes

    pol, _ = policy
    rng = np.random.default_rng(2)
    views = rng.integers(0, 256, size=(3, 2, R, R, 3), dtype=np.uint8)
    actions = rng.uniform(-0.5, 0.5, size=(3, 2, 7))
    both = imagine_views(pol, views, actions, feed_back="tokens")
    assert both.shape == (3, 2, 2, R, R, 3)
    for i in range(3):
        assert np.array_equal(imagine_views(pol, views[i : i + 1], actions[i : i + 1], feed_back="tokens")[0], both[i])
    third, wrist = pol.images.images_to_tokens(list(views[0]))
    prompt = world_prompt(pol, [third, wrist], actions[0, 0], "train")
    assert prompt.count(8197) == 2  # two image spans (BOI), then the action
    span = generate_image(pol.model, [prompt], R // 16, R // 16, pol.image_ids, n_images=2)[0].tolist()
    for v, image in enumerate(split_image_spans(span, 2)):
        assert np.array_equal(pol.images.decode(tokens_to_codes(image, pol.text.vocab))[0], both[0, 0, v])
    assert not np.array_equal(both[0, 0, 0], both[0, 0, 1])  # the views are generated, not copied
    with pytest.raises(ValueError, match="views"):
        imagine_views(pol, views[:, :1].repeat(3, axis=1), actions)


def _export(root, tasks=("pick_up_the_bowl", "open_the_drawer"), n_frames=4, dirs=("imgs",)):
    rng = np.random.default_rng(1)
    for task in tasks:
        for trj in ("trj_0", "trj_1"):
            (root / task / trj / "action").mkdir(parents=True)
            for d in dirs:
                (root / task / trj / d).mkdir(parents=True)
            for j in range(n_frames):
                for d in dirs:
                    Image.fromarray(rng.integers(0, 256, (R, R, 3), dtype=np.uint8)).save(
                        root / task / trj / d / f"image_{j}.png")
                np.save(root / task / trj / "action" / f"action_{j}.npy", rng.uniform(-0.5, 0.5, 7))


def test_cli_writes_report(policy, tmp_path):
    _, ckpt = policy
    _export(tmp_path / "data")
    out = tmp_path / "out"
    rc = main([f"policy={ckpt}", f"data_dir={tmp_path / 'data'}", "split=all", "horizon=2",
               "batch_size=3", "suite=libero_goal", f"out_dir={out}"])
    assert rc == 0
    strips = sorted((out / "strips").glob("*.png"))
    assert len(strips) == 4 and len(list((out / "strips").glob("*.gif"))) == 4
    assert Image.open(strips[0]).size == (2 * R, 2 * R)  # 2 steps wide, truth over imagined
    report = json.loads((out / "libero_goal_metrics.json").read_text())
    assert "inf" in json.dumps(report)
    assert (out / "libero_goal_metrics.md").read_text().count("|") > 4
    assert list(out.glob("*psnr*.png"))


def test_unknown_split_is_clear(policy, tmp_path):
    _, ckpt = policy
    _export(tmp_path / "data", tasks=("a_task",))
    with pytest.raises(ValueError, match="split"):
        main([f"policy={ckpt}", f"data_dir={tmp_path / 'data'}", "split=nope", f"out_dir={tmp_path / 'o'}"])


def test_cli_wrist_rolls_out_and_scores_both_views(policy, tmp_path):
    _, ckpt = policy
    _export(tmp_path / "data", tasks=("pick_up_the_bowl",), n_frames=3, dirs=("imgs_third_view", "imgs_wrist"))
    out = tmp_path / "out"
    rc = main([f"policy={ckpt}", f"data_dir={tmp_path / 'data'}", "split=all", "horizon=2", "wrist=true",
               "image_dir=imgs_third_view", "feed_back=tokens", "suite=bi", f"out_dir={out}"])
    assert rc == 0
    strips = sorted((out / "strips").glob("*.png"))
    assert len(strips) == 2
    assert Image.open(strips[0]).size == (2 * R, 4 * R)  # truth / imagined rows for third person and wrist
    gif = Image.open(min((out / "strips").glob("*.gif")))
    assert gif.size == (2 * R, 2 * R)  # truth | imagined, views stacked
    rows = json.loads((out / "bi_metrics.json").read_text())["results"]
    assert set(rows) == {"inf", "inf_wrist"}
    summary = json.loads((out / "imagine_summary.json").read_text())
    assert summary["views"] == ["imgs_third_view", "imgs_wrist"]
