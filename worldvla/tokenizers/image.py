"""Pixels <-> VQ codes <-> token ids, in Lumina-mGPT's "FlexAR" image layout.

Layout for an H x W image (official_format.md §1.4):
    [boi 8197] [size(H/32)] [size(W/32)]  then per latent row: (W/16 code ids) [row break 8803]  [eoi 8196]
256 px -> 276 tokens, 512 px -> 1060 tokens. Codes map to ids through the vocabulary names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worldvla import vocab as V
from worldvla.model.vqgan import VQGAN, load_vqgan
from worldvla.vocab import Vocab

PATCH = 32  # one size token counts 32-pixel grids
DOWNSAMPLE = 16  # VQ-GAN downsampling factor


def image_token_count(height: int, width: int | None = None) -> int:
    width = height if width is None else width
    return 4 + (height // DOWNSAMPLE) * (width // DOWNSAMPLE + 1)


def codes_to_tokens(codes: np.ndarray, vocab: Vocab) -> list[int]:
    """(h, w) VQ codes -> token ids with boi, size, row-break and eoi tokens."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] % 2 or codes.shape[1] % 2:
        raise ValueError(f"codes must be (h, w) with even sides, got {codes.shape}")
    h, w = codes.shape
    ids = vocab.code_to_id[codes]  # (h, w)
    rows = np.concatenate([ids, np.full((h, 1), V.ROW_BREAK_ID)], axis=1)  # (h, w+1)
    head = [V.BOI_ID, V.size_token_id(h // 2), V.size_token_id(w // 2)]
    return head + rows.reshape(-1).tolist() + [V.EOI_ID]


def tokens_to_codes(tokens: list[int] | np.ndarray, vocab: Vocab) -> np.ndarray:
    """Inverse of `codes_to_tokens` (boi/eoi optional); a malformed span is a ValueError."""
    t = [int(x) for x in tokens]
    if t and t[0] == V.BOI_ID:
        t = t[1:]
    if t and t[-1] == V.EOI_ID:
        t = t[:-1]
    if len(t) < 2:
        raise ValueError("image span too short for its two size tokens")
    h, w = (t[0] - V.SIZE_TOKEN_BASE) * 2, (t[1] - V.SIZE_TOKEN_BASE) * 2
    body = np.asarray(t[2:], dtype=np.int64)
    if h <= 0 or w <= 0 or body.size != h * (w + 1):
        raise ValueError(f"image span of {body.size} body tokens does not match {h}x{w} latents")
    grid = body.reshape(h, w + 1)
    if (grid[:, -1] != V.ROW_BREAK_ID).any():
        raise ValueError("image span: a latent row does not end with the row-break token")
    try:
        return np.vectorize(vocab.id_to_code.__getitem__, otypes=[np.int64])(grid[:, :-1])
    except KeyError as err:
        raise ValueError(f"image span holds non-image token id {err.args[0]}") from None


def crop_size_list(num_patches: int, patch: int = PATCH, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """Lumina-mGPT's candidate (w, h) crop sizes with at most `num_patches` patches."""
    sizes, wp, hp = [], num_patches, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            sizes.append((wp * patch, hp * patch))
        if (hp + 1) * wp <= num_patches:
            hp += 1
        else:
            wp -= 1
    return sizes


def var_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Lumina-mGPT's resize-and-crop to the best-matching crop size for `resolution`.

    Deviation (documented in docs/compatibility.md): the official code crops at a random offset
    when the resized image overshoots; we crop at the centre so tokenisation is deterministic.
    LIBERO frames are rendered at the target size, where both are the identity.
    """
    w, h = img.size
    sizes = crop_size_list((resolution // PATCH) ** 2)
    cw, ch = max(sizes, key=lambda s: min(s[0] / w, s[1] / h) / max(s[0] / w, s[1] / h))
    while min(img.size[0] / cw, img.size[1] / ch) >= 2:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    scale = max(cw / img.size[0], ch / img.size[1])
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), resample=Image.BICUBIC)
    left, top = (img.size[0] - cw) // 2, (img.size[1] - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def to_rgb_array(image) -> np.ndarray:
    """PIL image, path or HWC array -> (H, W, 3) uint8 RGB (RGBA composited on white)."""
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, Image.Image):
        if image.mode == "RGBA":
            bg = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(bg, image)
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image array must be (H, W, 3), got {arr.shape}")
    return arr.astype(np.uint8)


class ImageTokenizer:
    """VQ-GAN plus layout: `encode(images) -> codes`, `decode(codes) -> images`, and token helpers."""

    def __init__(self, vqgan: VQGAN, vocab: Vocab, resolution: int = 256, resize: bool = False):
        if resolution % PATCH:
            raise ValueError(f"resolution must be a multiple of {PATCH}, got {resolution}")
        self.vqgan = vqgan.float().eval()
        vocab.check_size_token(resolution // PATCH)  # the size token this resolution writes, by name
        self.vocab = vocab
        self.resolution = resolution
        self.resize = resize  # False: a frame of another size is an error (LIBERO renders at size)

    @classmethod
    def from_files(cls, config_path, ckpt_path, vocab: Vocab, resolution: int = 256, device="cpu", resize=False):
        return cls(load_vqgan(config_path, ckpt_path, device), vocab, resolution, resize)

    @property
    def device(self) -> torch.device:
        return next(self.vqgan.parameters()).device

    @property
    def tokens_per_image(self) -> int:
        return image_token_count(self.resolution)

    def preprocess(self, images) -> torch.Tensor:
        """Images -> (B, 3, R, R) fp32 in [-1, 1], on the VQ-GAN's device.

        The arithmetic is the official one: `x / 255 * 2 - 1` in numpy fp64, then cast to the VQ-GAN's
        fp32 (the same steps in fp32 round differently for some pixel values, and so can change codes)."""
        batch = images if isinstance(images, (list, tuple)) else [images]
        if isinstance(images, np.ndarray) and images.ndim == 4:
            batch = list(images)
        arrays = []
        for i, img in enumerate(batch):
            arr = to_rgb_array(img)
            if arr.shape[:2] != (self.resolution, self.resolution):
                if not self.resize:
                    raise ValueError(
                        f"image {i} is {arr.shape[1]}x{arr.shape[0]}, the tokenizer expects "
                        f"{self.resolution}x{self.resolution}; render at that size or pass resize=True"
                    )
                arr = np.asarray(var_center_crop(Image.fromarray(arr), self.resolution))
            arrays.append(arr)
        x = np.stack(arrays) / 255.0 * 2 - 1  # (B, H, W, 3) fp64
        return torch.from_numpy(x).to(self.device, torch.float32).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)

    def encode(self, images) -> np.ndarray:
        """Images -> (B, h, w) int64 VQ codes.

        Each image runs through the VQ-GAN alone: batched convolutions round differently, and a
        code or pixel must never depend on which other frames shared the batch."""
        x = self.preprocess(images)
        return np.concatenate([self.vqgan.encode(x[i : i + 1]).cpu().numpy() for i in range(len(x))])

    def decode(self, codes) -> np.ndarray:
        """(B, h, w) or (h, w) codes -> (B, H, W, 3) uint8 (truncating, as the official decode)."""
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long, device=self.device)
        if codes.ndim == 2:
            codes = codes[None]
        out = []
        for i in range(len(codes)):  # one at a time: batch-invariant (see encode)
            x = self.vqgan.decode(codes[i : i + 1])  # (1, 3, H, W) in [-1, 1]
            x = ((x + 1.0) / 2.0 * 255.0).permute(0, 2, 3, 1)  # (1, H, W, 3)
            out.append(x.to(torch.uint8).cpu().numpy())
        return np.concatenate(out)

    def image_to_tokens(self, image) -> list[int]:
        return codes_to_tokens(self.encode([image])[0], self.vocab)

    def images_to_tokens(self, images) -> list[list[int]]:
        if len(images) == 0:
            return []
        return [codes_to_tokens(c, self.vocab) for c in self.encode(list(images))]

    def tokens_to_image(self, tokens) -> np.ndarray:
        return self.decode(tokens_to_codes(tokens, self.vocab))[0]
