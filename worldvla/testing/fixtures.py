"""Tiny assets written in the official file formats, so the real loaders run without the hub.

- `write_text_tokenizer`: a tokenizers-library `text_tokenizer.json` with the real special tokens at
  their official ids (`<s>`..., 8192 `IMGIMG*` names, `<eoss>`, `<racm3:break>`, `<reservedNNNNN>` at
  NNNNN + 4) and a small byte-level BPE for text above them.
- `write_vqgan`: `vqgan.yaml` (taming layout) + `vqgan.ckpt` (Lightning-style `state_dict`, with a
  stray `loss.*` key as in the real file) for a narrow, randomly initialised VQ-GAN.
- `make_tiny_assets`: both, in the `tokenizer/` folder layout of the official checkpoints.
Used by the tests, the benchmarks and the CPU demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from worldvla import vocab as V
from worldvla.model.vqgan import VQGAN, VQGANConfig

TEXT_BASE_ID = 16100  # first id of the fixture's byte-level text tokens (above every reserved id)
FIXTURE_VOCAB_SIZE = 16640  # model vocab of tiny configs: covers specials, state ids and text
SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}

# Text the fixture's BPE merges are learned from: prompts and LIBERO-like instructions.
CORPUS = [
    "What action should the robot take to pick up the black bowl and place it on the plate?",
    "Generate the next image based on the provided sequence of historical images and corresponding actions.",
    "Generate the image based on the current image and the action.",
    "put the bowl on the stove", "open the top drawer of the cabinet", "turn on the stove",
    "pick up the alphabet soup and place it in the basket", "push the plate to the front of the stove",
    "put the wine bottle on top of the cabinet", "put both the cream cheese box and the butter in the basket",
    "LIVING ROOM SCENE2 put both the alphabet soup and the tomato sauce in the basket",
]
TINY_VQGAN = VQGANConfig(
    embed_dim=32, n_embed=V.NUM_IMAGE_CODES, z_channels=32, resolution=256, ch=32,
    ch_mult=[1, 1, 2, 2, 4], num_res_blocks=1, attn_resolutions=[], dropout=0.0,
)


def _text_bpe(vocab_budget: int = 520) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE learned on CORPUS: (token -> local id, merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_budget, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], model["merges"]


def write_text_tokenizer(path: str | Path, permute_image_codes: bool = True, seed: int = 0) -> Path:
    """Write the fixture tokenizer; with `permute_image_codes` the code -> id map is not an offset,
    so code that assumes `id = 4 + code` instead of reading names fails the tests."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names: dict[str, int] = dict(SPECIALS)
    image_ids = np.arange(V.FIRST_IMAGE_ID, V.FIRST_IMAGE_ID + V.NUM_IMAGE_CODES)
    if permute_image_codes:
        image_ids = np.random.default_rng(seed).permutation(image_ids)
    for code, tid in enumerate(image_ids.tolist()):
        names[V.image_name_from_code(code)] = tid
    names["<eoss>"], names["<racm3:break>"] = V.EOI_ID, V.BOI_ID
    for tid in range(V.BOI_ID + 1, TEXT_BASE_ID):
        names[V.reserved_name(tid)] = tid
    text_vocab, merges = _text_bpe()
    if len(text_vocab) + TEXT_BASE_ID > FIXTURE_VOCAB_SIZE:
        raise RuntimeError("fixture text vocabulary does not fit below FIXTURE_VOCAB_SIZE")
    for tok, local in text_vocab.items():
        names[tok] = TEXT_BASE_ID + local
    added = [
        {"id": tid, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for name, tid in sorted(names.items(), key=lambda kv: kv[1])
        if tid < TEXT_BASE_ID and not name.startswith(V.IMAGE_TOKEN_PREFIX)
    ]
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": names, "merges": merges},
    }
    path.write_text(json.dumps(data))
    return path


def write_vqgan(directory: str | Path, cfg: VQGANConfig = TINY_VQGAN, seed: int = 0) -> tuple[Path, Path]:
    """Write `vqgan.yaml` and `vqgan.ckpt` for a random VQ-GAN of config `cfg`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = VQGAN(cfg)
    with torch.no_grad():  # spread the codebook so random images use many codes
        model.quantize.embedding.weight.normal_(0.0, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.zeros(1)  # the real ckpt carries loss weights
    yaml_path, ckpt_path = directory / "vqgan.yaml", directory / "vqgan.ckpt"
    yaml_path.write_text(yaml.safe_dump(cfg.to_yaml_dict(), sort_keys=False))
    torch.save({"state_dict": state, "global_step": 0, "epoch": 0}, ckpt_path)
    return yaml_path, ckpt_path


@dataclass
class TinyAssets:
    root: Path
    tokenizer_json: Path
    vqgan_yaml: Path
    vqgan_ckpt: Path


def make_tiny_assets(root: str | Path, permute_image_codes: bool = True) -> TinyAssets:
    """`root/tokenizer/{text_tokenizer.json, vqgan.yaml, vqgan.ckpt}` (official folder layout)."""
    tok_dir = Path(root) / "tokenizer"
    tok = write_text_tokenizer(tok_dir / "text_tokenizer.json", permute_image_codes=permute_image_codes)
    yaml_path, ckpt_path = write_vqgan(tok_dir)
    return TinyAssets(Path(root), tok, yaml_path, ckpt_path)
