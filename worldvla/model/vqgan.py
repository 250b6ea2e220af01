"""Chameleon VQ-GAN (taming-transformers VQModel): encoder, quantizer **and decoder**.

transformers' `ChameleonVQVAE` only encodes; the world model must turn generated codes back into
pixels, so this module carries both halves with the official parameter names (`encoder.*`,
`decoder.*`, `quantize.embedding.weight`, `quant_conv.*`, `post_quant_conv.*`), loads the official
`vqgan.yaml` + Lightning-style `vqgan.ckpt`, and always runs in fp32 (official_format.md §7).
Parity of the encoder with transformers is tested in tests/test_vqgan.py.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from torch import nn

from worldvla import vocab as V
from worldvla.atomic import fsync_file
from worldvla.errors import InputFileError, exit_on_input_errors
from worldvla.model.safe_ckpt import load_state_dict

log = logging.getLogger(__name__)
GN_GROUPS, GN_EPS = 32, 1e-6  # taming GroupNorm settings


def _check_number(path: Path, key: str, value, kind: str) -> None:
    """A vqgan.yaml value has its field's type (a string where a size belongs fails deep in torch otherwise)."""
    where = f"model.params.{key}" if key in ("embed_dim", "n_embed") else f"model.params.ddconfig.{key}"
    is_list = kind == "list[int]"
    items = value if is_list and isinstance(value, list) else [value]
    want = {"int": int, "list[int]": int, "bool": bool, "float": (int, float)}[kind]
    wrong = [v for v in items if not isinstance(v, want) or (isinstance(v, bool) and kind != "bool")]
    if wrong or (is_list and not isinstance(value, list)):
        raise InputFileError(path, f"expected {'a list of integers' if is_list else 'a ' + kind}, got {value!r}",
                             where)


@dataclass
class VQGANConfig:
    """`model.params` of vqgan.yaml; defaults are Chameleon's (= HF ChameleonVQVAEConfig)."""

    embed_dim: int = 256
    n_embed: int = V.NUM_IMAGE_CODES
    double_z: bool = False
    z_channels: int = 256
    resolution: int = 512
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.0

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_yaml(cls, path: str | Path) -> VQGANConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VQ-GAN config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise InputFileError(path, f"invalid YAML ({str(err).splitlines()[0]})") from None
        try:
            params = data["model"]["params"]
            dd = dict(params["ddconfig"])
        except (KeyError, TypeError):
            raise ValueError(f"{path}: expected model.params.ddconfig (taming vqgan.yaml layout)") from None
        known = set(cls.__dataclass_fields__)
        cfg = {k: v for k, v in dd.items() if k in known}
        cfg["attn_resolutions"] = list(dd.get("attn_resolutions") or [])
        for key in ("embed_dim", "n_embed"):
            if key not in params:
                raise ValueError(f"{path}: model.params.{key} missing")
            cfg[key] = params[key]
        for key, value in cfg.items():
            _check_number(path, key, value, cls.__dataclass_fields__[key].type)
        return cls(**cfg)

    def to_yaml_dict(self) -> dict:
        dd = asdict(self)
        top = {k: dd.pop(k) for k in ("embed_dim", "n_embed")}
        return {"model": {"target": "taming.models.vqgan.VQModel", "params": {**top, "ddconfig": dd}}}


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, ch, eps=GN_EPS, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.dropout = nn.Dropout(dropout)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all h*w positions."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        k = self.k(y).reshape(b, c, h * w)  # (B, C, HW)
        v = self.v(y).reshape(b, c, h * w)  # (B, C, HW)
        attn = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)  # (B, HW_q, HW_k)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric padding


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(ch: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(ch, ch, dropout), AttnBlock(ch), ResnetBlock(ch, ch, dropout)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1)
        mult_in = (1, *cfg.ch_mult)
        res, self.down = cfg.resolution, nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            c_in, c_out = cfg.ch * mult_in[level], cfg.ch * mult
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                down.block.append(ResnetBlock(c_in, c_out, cfg.dropout))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    down.attn.append(AttnBlock(c_in))
            if level != len(cfg.ch_mult) - 1:
                down.downsample = Downsample(c_in)
                res //= 2
            self.down.append(down)
        self.mid = _mid(c_in, cfg.dropout)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        c_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downsample
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, 1, 1)
        self.mid = _mid(c_in, cfg.dropout)
        ups: list[nn.Module] = []
        for level in reversed(range(len(cfg.ch_mult))):
            c_out = cfg.ch * cfg.ch_mult[level]
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                up.block.append(ResnetBlock(c_in, c_out, cfg.dropout))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    up.attn.append(AttnBlock(c_in))
            if level != 0:
                up.upsample = Upsample(c_in)
                res *= 2
            ups.insert(0, up)  # index by level, as taming does
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for up in reversed(self.up):
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, h, w) nearest-code indices (squared L2, raster order)."""
        b, _, h, w = z.shape
        return self.distances(z).argmin(1).reshape(b, h, w)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B*h*w, n_embed) squared L2 distances to every code (raster order)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, C)
        emb = self.embedding.weight
        return flat.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1) - 2 * flat @ emb.t()

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, C, h, w) codebook vectors."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()


class VQGAN(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = Quantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H/16, W/16) int64 codes."""
        return self.quantize(self.quant_conv(self.encoder(pixels)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, 16h, 16w) in [-1, 1] (clamped, as the official decode)."""
        z = self.post_quant_conv(self.quantize.lookup(codes))
        return self.decoder(z).clamp(-1.0, 1.0)


def load_vqgan(config_path: str | Path, ckpt_path: str | Path, device: str | torch.device = "cpu") -> VQGAN:
    """Load the official `vqgan.yaml` + Lightning-style `vqgan.ckpt` (top-level `state_dict`, loss keys
    ignored), or the same weights as safetensors (`convert` below). The checkpoint is read without running
    code from it (model/safe_ckpt.py): a file that needs more than tensors and Lightning metadata is refused."""
    cfg = VQGANConfig.from_yaml(config_path)
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"VQ-GAN weights not found: {ckpt_path} (see ckpts/README.md)")
    state = load_state_dict(ckpt_path)
    model = VQGAN(cfg)
    wanted = model.state_dict()
    state = {k: v for k, v in state.items() if k in wanted}  # drops `loss.*` (discriminator, LPIPS)
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ValueError(f"{ckpt_path}: missing {len(missing)} VQ-GAN weights, e.g. {missing[:3]}")
    for k, v in state.items():
        if v.shape != wanted[k].shape:
            raise ValueError(f"{ckpt_path}: {k} has shape {tuple(v.shape)}, config gives {tuple(wanted[k].shape)}")
    model.load_state_dict(state)
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


def convert(src: str | Path, dst: str | Path, allow: tuple[str, ...] = ()) -> Path:
    """`vqgan.ckpt` -> safetensors holding only the VQ-GAN's `state_dict` tensors. `allow`: extra global
    names the file's metadata uses, read as inert placeholders and dropped (never imported or called)."""
    state = load_state_dict(src, tuple(allow))
    state = {k: v.contiguous() for k, v in state.items() if not k.startswith("loss.")}
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"format": "pt", "source": Path(src).name})
    fsync_file(tmp)
    os.replace(tmp, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    """`python -m worldvla.model.vqgan convert IN.ckpt OUT.safetensors [--allow NAME ...]`."""
    parser = argparse.ArgumentParser(prog="python -m worldvla.model.vqgan", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="a vqgan.ckpt -> safetensors (weights only; no code from the file runs)")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--allow", nargs="*", default=[], help="global names (module.Class) of metadata to drop")
    args = parser.parse_args(argv)
    out = exit_on_input_errors(convert, FileNotFoundError)(args.src, args.dst, tuple(args.allow))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
