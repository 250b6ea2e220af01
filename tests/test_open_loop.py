"""Open-loop action evaluation (worldvla/eval/open_loop.py).

- a hand-set policy whose k-th action is the expert's shifted by exactly k bins (gripper flipped at the
  last position) gives exactly those per-position errors, agreements and token accuracies, on
  conversation files written by data/conversations.py;
- on a real tiny checkpoint, the prompts built from conversation files equal the pretokenized training
  prompts (same decoded chunks), parallel and sequential decoding agree under the action mask, and the
  CLI writes its JSON, table and plot;
- the trainer's hook logs the open-loop metrics of data.val.
"""

import json

import numpy as np
import pytest
from PIL import Image

from worldvla.eval import open_loop as OL
from worldvla.policy.policy import WorldVLAPolicy, checkpoint_action_mask
from worldvla.recipe import Recipe
from worldvla.tokenizers.action import NORM_EPS, ActionTokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")
K, R = 5, 32


class ShiftedPolicy:
    """Hand-set policy: reads the frame index p from the current image's pixels, and answers the expert
    chunk of frames p..p+K-1 (in bins) with the arm dimensions shifted up by k bins at position k and the
    gripper bin mirrored (open <-> close) at the last position."""

    uses_wrist = False
    chunk_size = K

    def __init__(self, expert_bins: np.ndarray):
        self.expert_bins = expert_bins  # (frames, 7)
        self.action_tok = ActionTokenizer()
        self.instructions = []

    def prompt_ids(self, instruction, images, wrist=None, state=None):
        self.instructions.append(instruction)
        return [int(np.asarray(images[-1])[0, 0, 0])]  # frame p

    def predict_tokens(self, prompts):
        out = []
        for (p,) in prompts:
            bins = self.expert_bins[p: p + K].copy()
            bins[:, :6] += np.arange(K)[:, None]
            first, last = self.action_tok.first_bin_id, self.action_tok.last_bin_id
            bins[K - 1, 6] = first + last - bins[K - 1, 6]  # mirrored gripper bin
            out.append(bins)
        return out


def _export(root, n_frames, bins, tok):
    trj = root / "pick_up_the_bowl" / "trj_0"
    (trj / "action").mkdir(parents=True)
    (trj / "imgs").mkdir()
    for j in range(n_frames):
        Image.fromarray(np.full((R, R, 3), j, dtype=np.uint8)).save(trj / "imgs" / f"image_{j}.png")
        np.save(trj / "action" / f"action_{j}.npy", tok.decode(bins[j]))  # expert actions at bin centres


def test_hand_set_policy_gives_the_exact_per_position_errors(tmp_path):
    from worldvla.data.conversations import ConversationsConfig, generate

    tok = ActionTokenizer()
    n_frames = 12
    rng = np.random.default_rng(0)
    bins = np.concatenate([rng.integers(60, 190, (n_frames, 6)), np.where(np.arange(n_frames) % 3 == 0, 12, 250)[:, None]],
                          axis=1) + tok.first_bin_id - 1  # bins well inside the range: no clipping at +k
    _export(tmp_path / "export", n_frames, bins, tok)
    files = generate(ConversationsConfig(base_dir=tmp_path / "export", output_dir=tmp_path / "convs", task_name="t", train_ratio=1.0, recipe=Recipe(resolution=R, chunk_size=K, history=2)))
    policy = ShiftedPolicy(bins)
    res = OL.run(OL.OpenLoopConfig(inputs=[str(files["train"]["action"])], out_dir=str(tmp_path / "out"), batch_size=3),
                 policy=policy)
    (r,) = res.values()
    n = n_frames - K + 1
    assert r["n_samples"] == n and r["chunk_size"] == K
    assert set(policy.instructions) == {"pick up the bowl"}
    # one bin of the arm dimensions is (max - min + eps) / 255 in env units: position k (0-based) is off by k bins
    # (to the fp32 precision of the official bin centres, worldvla.tokenizers.action.official_bin_centres)
    width = (np.asarray(tok.stats.max) - np.asarray(tok.stats.min) + NORM_EPS) / 255
    by_pos_dim = np.asarray(r["l1_by_position_dim"])
    np.testing.assert_allclose(by_pos_dim[:, :6], np.arange(K)[:, None] * width[None, :6], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(r["l1_arm_by_position"], np.arange(K) * width[:6].mean(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(by_pos_dim[: K - 1, 6], 0.0, atol=1e-12)  # gripper right until the last position
    assert r["gripper_agreement_by_position"] == [1.0] * (K - 1) + [0.0]
    np.testing.assert_allclose(r["token_accuracy_by_position"], [1.0] + [1 / 7] * (K - 2) + [0.0])
    assert r["gripper_agreement"] == pytest.approx((K - 1) / K)
    written = json.loads((tmp_path / "out" / f"open_loop_{files['train']['action'].stem}.json").read_text())
    assert written["l1_by_position"] == r["l1_by_position"]
    assert (tmp_path / "out" / "open_loop.md").read_text().count("|") > 2 * K


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "convs.json"
    bad.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hello<|image|>"},
                                                  {"from": "gpt", "value": "<|action|>"}], "image": [], "action": []}]))
    with pytest.raises(ValueError, match=r"convs.json record 0: conversations\[0\]\.value"):
        OL.run(OL.OpenLoopConfig(inputs=[str(bad)], out_dir=str(tmp_path / "o")), policy=ShiftedPolicy(np.zeros((1, 7))))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"files": {"train": {"action": "a.json"}}}))
    with pytest.raises(ValueError, match="split 'val_ood' not in files"):
        OL.split_files(manifest, ["val_ood"])
    with pytest.raises(ValueError, match=r"\(N, K, 7\)"):
        OL.score(np.zeros((2, K, 6)), np.zeros((2, K, 6)), np.zeros((2, K, 6)), np.zeros((2, K, 6)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_assets):
    from worldvla.testing.tiny_model import write_tiny_checkpoint
    from worldvla.train.tiny_data import make_tiny_data

    data = make_tiny_data(tmp_path_factory.mktemp("ol_data"), resolution=64, n_tasks=1, n_traj=2, n_frames=10,
                          assets=tiny_assets)
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("ol_ckpt"), tiny_assets, resolution=64)
    return data, ckpt


def test_conversation_prompts_equal_the_pretokenized_ones_and_modes_agree(tiny, tmp_path):
    from worldvla.policy.policy import WorldVLAPolicy

    data, ckpt = tiny
    convs = data.root / "convs" / "libero_tiny_his_2_train_img_only_ck_5_64.json"
    policy = WorldVLAPolicy.from_pretrained(ckpt)
    from_json = OL.load_samples(policy, convs, None, 0)
    from_tokens = OL.load_samples(policy, data.action, None, 0)
    assert len(from_json) == len(from_tokens) == 2 * (10 - K + 1)
    for a, b in zip(from_json, from_tokens):
        assert a.prompt == b.prompt  # the rollout prompt is the training prompt
        assert np.array_equal(a.expert_tokens, b.expert_tokens)
        assert np.abs(a.expert - b.expert).max() <= policy.action_tok.half_bin().max()  # bin centre vs exact
    parallel = OL.evaluate(policy, from_json, batch_size=4)
    policy.decode = "sequential"
    assert OL.evaluate(policy, from_json, batch_size=3) == parallel  # same tokens, any batching
    assert 0 <= parallel["token_accuracy"] <= 1 and len(parallel["l1_by_position"]) == K

    rc = OL.main([f"policy={ckpt}", f"manifest={data.root / 'convs' / 'libero_tiny_64_conversations_manifest.json'}",
                  "splits=[train]", "max_samples=4", f"out_dir={tmp_path / 'cli'}"])
    assert rc == 0
    res = json.loads((tmp_path / "cli" / "open_loop_train.json").read_text())
    assert res["n_samples"] == 4 and res["decode"] == "parallel" and res["action_mask"] is True
    with Image.open(tmp_path / "cli" / "open_loop_train_l1_vs_k.png") as img:
        assert img.format == "PNG"


def test_a_causal_checkpoint_is_decoded_causally(tiny, tmp_path):
    import shutil

    data, ckpt = tiny
    causal = tmp_path / "causal"
    shutil.copytree(ckpt, causal)
    (causal / "train_config.yaml").write_text("model:\n  action_mask: false\n")
    assert checkpoint_action_mask(causal) is False and checkpoint_action_mask(ckpt) is True
    OL.main([f"policy={causal}", f"inputs=[{data.action}]", "max_samples=2", f"out_dir={tmp_path / 'o'}"])
    res = json.loads((tmp_path / "o" / "open_loop_action.json").read_text())
    assert res["decode"] == "sequential" and res["action_mask"] is False
    # the closed loop (eval, serve) loads the policy the same way: a causal model decodes causally there too
    policy = WorldVLAPolicy.from_pretrained(causal)
    assert (policy.decode, policy.action_mask) == ("sequential", False)
    policy = WorldVLAPolicy.from_pretrained(ckpt)
    assert (policy.decode, policy.action_mask) == ("parallel", True)


def test_trainer_logs_open_loop_metrics_of_data_val(tiny, tmp_path):
    from worldvla.config import load_config
    from worldvla.train.config import TrainConfig
    from worldvla.train.loop import train
    from worldvla.train.tracking import read_log

    data, _ckpt = tiny
    cfg = load_config(TrainConfig, "configs/tiny.yaml", [
        f"data.train=[{data.train}]", f"data.val=[{data.action}]", f"data.tokenizer={data.tokenizer}",
        f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=2", "train.open_loop_samples=3",
        "logging.progress_bar=false", "logging.wandb=false", "logging.plot=false"])
    train(cfg)
    rows = [r for r in read_log(tmp_path / "run" / "train_log.jsonl") if "val_open_loop_l1" in r]
    assert rows and rows[-1]["val_open_loop_samples"] == 3 and rows[-1]["step"] == 2
    assert all(f"val_open_loop_l1_k{k}" in rows[-1] for k in range(1, K + 1))
    full = json.loads((tmp_path / "run" / "open_loop" / "step_00000002.json").read_text())
    assert full["n_samples"] == 3 and np.isclose(np.mean(full["l1_by_position"]), rows[-1]["val_open_loop_l1"])
