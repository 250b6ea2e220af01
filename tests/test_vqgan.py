import numpy as np
import pytest
import torch

from worldvla import vocab as V
from worldvla.model.vqgan import VQGANConfig, load_vqgan
from worldvla.tokenizers.image import ImageTokenizer, codes_to_tokens, image_token_count, tokens_to_codes


def _hf_vqvae(cfg: VQGANConfig, state: dict):
    from transformers import ChameleonVQVAE
    from transformers.models.chameleon.configuration_chameleon import ChameleonVQVAEConfig

    hf_cfg = ChameleonVQVAEConfig(
        embed_dim=cfg.embed_dim, num_embeddings=cfg.n_embed, double_latent=cfg.double_z,
        latent_channels=cfg.z_channels, resolution=cfg.resolution, in_channels=cfg.in_channels,
        base_channels=cfg.ch, channel_multiplier=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
        attn_resolutions=cfg.attn_resolutions, dropout=cfg.dropout, attn_type="vanilla",
    )
    hf = ChameleonVQVAE(hf_cfg).eval()
    hf_state = hf.state_dict()
    shared = {k: v for k, v in state.items() if k in hf_state}
    assert set(hf_state) == set(shared), sorted(set(hf_state) - set(shared))[:5]  # same key names
    hf.load_state_dict(shared)
    return hf


@pytest.mark.parametrize("attn_res", [[], [64]])
def test_encoder_matches_transformers(attn_res):
    torch.manual_seed(0)
    from worldvla.model.vqgan import VQGAN

    cfg = VQGANConfig(embed_dim=32, n_embed=512, z_channels=32, resolution=128, ch=32,
                      ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=attn_res)
    ours = VQGAN(cfg).eval()
    with torch.no_grad():
        ours.quantize.embedding.weight.normal_(0, 0.3)
    hf = _hf_vqvae(cfg, ours.state_dict())
    x = torch.rand(3, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        want = hf.encode(x).image_tokens.reshape(3, 32, 32)
    got = ours.encode(x)
    assert torch.equal(got, want)
    assert len(torch.unique(got)) > 20  # a non-degenerate comparison


def test_official_checkpoint_loads_and_shapes(tiny_assets, image_tokenizer, rng):
    model = load_vqgan(tiny_assets.vqgan_yaml, tiny_assets.vqgan_ckpt)
    assert next(model.parameters()).dtype == torch.float32
    imgs = rng.integers(0, 256, size=(2, 256, 256, 3), dtype=np.uint8)
    codes = image_tokenizer.encode(imgs)
    assert codes.shape == (2, 16, 16) and codes.dtype == np.int64
    out = image_tokenizer.decode(codes)
    assert out.shape == (2, 256, 256, 3) and out.dtype == np.uint8


def test_512_layout(tiny_assets, text_tokenizer, rng):
    tok = ImageTokenizer.from_files(tiny_assets.vqgan_yaml, tiny_assets.vqgan_ckpt, text_tokenizer.vocab, 512)
    ids = tok.image_to_tokens(rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8))
    assert len(ids) == 1060 == image_token_count(512)
    assert ids[:3] == [8197, 8820, 8820] and ids[-1] == 8196
    assert all(ids[3 + 32 + r * 33] == 8803 for r in range(32))
    assert tok.decode(tokens_to_codes(ids, text_tokenizer.vocab)).shape == (1, 512, 512, 3)


def test_token_mapping_both_ways(text_tokenizer, rng):
    vocab = text_tokenizer.vocab
    codes = rng.integers(0, 8192, size=(16, 16))
    ids = codes_to_tokens(codes, vocab)
    assert len(ids) == 276 == image_token_count(256)
    assert ids[:3] == [8197, 8812, 8812] and ids[-1] == 8196
    body = np.array(ids[3:-1]).reshape(16, 17)
    assert (body[:, -1] == 8803).all()
    names = {v: k for k, v in text_tokenizer._tok.get_vocab().items()}
    assert [V.image_code_from_name(names[i]) for i in body[0, :-1]] == codes[0].tolist()
    assert np.array_equal(tokens_to_codes(ids, vocab), codes)
    with pytest.raises(ValueError, match="row-break"):
        tokens_to_codes(ids[:19] + [5] + ids[20:], vocab)  # first row break replaced
    with pytest.raises(ValueError, match="non-image"):
        bad = list(ids)
        bad[4] = 9000
        tokens_to_codes(bad, vocab)


def test_wrong_image_size_and_missing_files(image_tokenizer, tiny_assets, tmp_path):
    with pytest.raises(ValueError, match="200x256.*256x256"):
        image_tokenizer.encode([np.zeros((256, 200, 3), np.uint8)])
    with pytest.raises(FileNotFoundError, match="vqgan.ckpt"):
        load_vqgan(tiny_assets.vqgan_yaml, tmp_path / "vqgan.ckpt")
    with pytest.raises(FileNotFoundError, match="vqgan.yaml"):
        load_vqgan(tmp_path / "vqgan.yaml", tiny_assets.vqgan_ckpt)


def test_resize_option_uses_lumina_crop(image_tokenizer, rng):
    from worldvla.tokenizers.image import crop_size_list

    tok = ImageTokenizer(image_tokenizer.vqgan, image_tokenizer.vocab, 256, resize=True)
    square = tok.encode([rng.integers(0, 256, size=(600, 600, 3), dtype=np.uint8)])
    assert square.shape == (1, 16, 16)  # BOX halving + BICUBIC to 256 x 256
    # Lumina-mGPT picks the crop size whose aspect ratio matches best: 400x300 -> 288x224 (w x h)
    assert (288, 224) in crop_size_list(64)
    wide = tok.encode([rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)])
    assert wide.shape == (1, 224 // 16, 288 // 16)


def test_batch_invariant(image_tokenizer, rng):
    imgs = rng.integers(0, 256, size=(3, 256, 256, 3), dtype=np.uint8)
    codes = image_tokenizer.encode(imgs)
    assert np.array_equal(codes[1], image_tokenizer.encode(imgs[1:2])[0])
    pixels = image_tokenizer.decode(codes)
    assert np.array_equal(pixels[2], image_tokenizer.decode(codes[2])[0])


def test_vq_input_arithmetic_is_the_official_fp64_then_fp32(image_tokenizer, rng):
    """Official `img_tokens_from_pil`: `np.array(img) / 255.0`, `* 2 - 1` in numpy fp64, then
    `torch.from_numpy(...).to(conv_in.weight)` (fp32). Every uint8 value is checked bit for bit."""
    from PIL import Image

    img = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    img.reshape(-1)[:256] = np.arange(256, dtype=np.uint8)  # all 256 pixel values occur
    np_img = np.array(Image.fromarray(img)) / 255.0
    np_img = np_img * 2 - 1
    want = torch.from_numpy(np_img).permute(2, 0, 1).to(torch.float32)[None]
    got = image_tokenizer.preprocess([img])
    assert got.dtype == torch.float32 and torch.equal(got, want)
    fp32 = torch.from_numpy(img).float() / 255.0 * 2.0 - 1.0  # the same steps in fp32 differ for some values
    assert not torch.equal(fp32.permute(2, 0, 1)[None], want)
    assert np.array_equal(image_tokenizer.encode([img]),
                          image_tokenizer.vqgan.encode(want.to(image_tokenizer.device)).cpu().numpy())
