"""Pixels <-> VQ codes <-> token ids, in Lumina-mGPT's "FlexAR" image layout.

Layout for an H x W image (official_format.md §1.4):
    [boi 8197] [size(H/32)] [size(W/32)]  then per latent row: (W/16 code ids) [row break 8803]  [eoi 8196]
256 px -> 276 tokens, 512 px -> 1060 tokens. Codes map to ids through the vocabulary names.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worldvla import vocab as V
from worldvla.model.vqgan import VQGAN, load_vqgan
from worldvla.vocab import Vocab

PATCH = 32  # one size token counts 32-pixel grids
DOWNSAMPLE = 16  # VQ-GAN downsampling factor
ENCODE_BATCH_CUDA = 16  # images per VQ-GAN call on CUDA (encode_batch=None)
TIE_MARGIN = 1e-4  # relative distance gap under which a batched code is re-checked alone (see encode)


@contextmanager
def _exact_fp32():
    """fp32 convolutions and matmuls without TF32 (its ~1e-3 rounding would make near-ties common)."""
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before


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


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, 3) uint8 frame as (size, size, 3): PIL bicubic to the square, no crop, as RynnVLA-002's
    LeRobot item processor does (`Image.resize((256, 256))`, whose default filter is bicubic) before its
    crop, which is then the identity. A frame already at the size is returned as it is."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


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

    def __init__(self, vqgan: VQGAN, vocab: Vocab, resolution: int = 256, resize: bool = False,
                 encode_batch: int | None = None):
        if resolution % PATCH:
            raise ValueError(f"resolution must be a multiple of {PATCH}, got {resolution}")
        self.vqgan = vqgan.float().eval()
        vocab.check_size_token(resolution // PATCH)  # the size token this resolution writes, by name
        self.vocab = vocab
        self.resolution = resolution
        self.resize = resize  # False: a frame of another size is an error (LIBERO renders at size)
        self.encode_batch = encode_batch  # images per VQ-GAN call (None: ENCODE_BATCH_CUDA on CUDA, 1 on CPU)
        self.reencoded = 0  # images of batched calls encoded again alone (near-ties), for benchmarks

    @classmethod
    def from_files(cls, config_path, ckpt_path, vocab: Vocab, resolution: int = 256, device="cpu", resize=False,
                   encode_batch: int | None = None):
        return cls(load_vqgan(config_path, ckpt_path, device), vocab, resolution, resize, encode_batch)

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
        """Images -> (B, h, w) int64 VQ codes, identical to encoding each image alone.

        Batched convolutions round differently from batch-1 ones, and a code must never depend on
        which other frames shared the batch. So on CUDA (or with `encode_batch` > 1) images run
        `encode_batch` at a time, and an image with any latent whose two nearest codes are closer than
        TIE_MARGIN (relative) is encoded again alone: elsewhere the rounding difference (~1e-6 relative
        in fp32; TF32 is switched off here) cannot change the nearest code. On CPU one at a time is
        also the fastest, so that stays the default there."""
        x = self.preprocess(images)
        batch = self.encode_batch or (ENCODE_BATCH_CUDA if x.device.type == "cuda" else 1)
        with _exact_fp32():
            if batch <= 1:
                return np.concatenate([self._encode_alone(x[i : i + 1]) for i in range(len(x))])
            return np.concatenate([self._encode_batch(x[i : i + batch]) for i in range(0, len(x), batch)])

    def _encode_alone(self, x: torch.Tensor) -> np.ndarray:
        return self.vqgan.encode(x).cpu().numpy()

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqgan.quant_conv(self.vqgan.encoder(x))

    @torch.no_grad()
    def _encode_batch(self, x: torch.Tensor) -> np.ndarray:
        if len(x) == 1:
            return self._encode_alone(x)
        z = self._latents(x)  # (B, C, h, w)
        b, _, h, w = z.shape
        dist = self.vqgan.quantize.distances(z)  # (B*h*w, n_embed)
        near = dist.topk(2, dim=1, largest=False)
        codes = near.indices[:, 0].reshape(b, h, w)
        scale = z.permute(0, 2, 3, 1).reshape(len(dist), -1).pow(2).sum(1) + \
            self.vqgan.quantize.embedding.weight.pow(2).sum(1)[near.indices[:, 0]]  # |z|^2 + |e|^2
        close = ((near.values[:, 1] - near.values[:, 0]) <= TIE_MARGIN * scale).reshape(b, -1).any(1)
        self.reencoded += int(close.sum())
        out = codes.cpu().numpy()
        for i in torch.nonzero(close).flatten().tolist():  # near-ties: the batch-1 result decides
            out[i] = self._encode_alone(x[i : i + 1])[0]
        return out

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
