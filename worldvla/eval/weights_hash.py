"""A fingerprint of a policy checkpoint's files, recorded in run.json so a resume cannot mix two models.

What is hashed: config.json, worldvla.json, every weight file and the tokenizer files the policy
loads (text tokenizer, vqgan.yaml, vqgan.ckpt), each with its name and size. Files up to
`FULL_HASH_BYTES` in all are hashed completely. Beyond that (a 7B checkpoint is ~14 GB: ~25 s of
sha256 at the ~0.6 GB/s measured on a shared CPU, at every resume) each file contributes its
first 1 MiB (the safetensors header with names, shapes and offsets) and `SAMPLES` blocks of
64 KiB spread evenly over it, ~20 MB per file: two trained models differ in every block, so a
weight swap is caught, while a resume costs well under a second. The mtime is left out on purpose:
copying the same checkpoint elsewhere, or `touch`, must not block a resume.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from worldvla.recipe import find_tokenizer_dir

FULL_HASH_BYTES = 2 << 30
SAMPLES, BLOCK, HEAD = 256, 64 << 10, 1 << 20
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_NAMES = ("text_tokenizer.json", "vqgan.yaml", "vqgan.ckpt")


def checkpoint_files(folder: Path, tokenizer: str | Path | None = None) -> list[Path]:
    folder = Path(folder)
    files = [folder / n for n in ("config.json", "worldvla.json") if (folder / n).is_file()]
    for pattern in WEIGHT_GLOBS:
        files += sorted(folder.glob(pattern))
    try:
        tok = find_tokenizer_dir(folder, tokenizer)
        files += [tok / n for n in TOKENIZER_NAMES]
    except FileNotFoundError:
        pass  # the policy's own loader reports a missing tokenizer
    return files


def _sampled(h, f, size: int) -> None:
    h.update(f.read(HEAD))
    if size <= HEAD:
        return
    step = max(BLOCK, (size - HEAD) // SAMPLES)
    for pos in range(HEAD, size, step):
        f.seek(pos)
        h.update(f.read(BLOCK))


def weights_fingerprint(folder: str | Path, tokenizer: str | Path | None = None) -> dict:
    """{"sha256", "method": full | sampled, "files", "bytes"} of a checkpoint folder's files."""
    folder = Path(folder)
    files = checkpoint_files(folder, tokenizer)
    total = sum(f.stat().st_size for f in files)
    full = total <= FULL_HASH_BYTES
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if full:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            else:
                _sampled(h, fh, size)
    return {"sha256": h.hexdigest(), "method": "full" if full else "sampled", "files": len(files), "bytes": total}
