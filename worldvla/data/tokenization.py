"""Conversation records -> `Sample`s with a per-frame image-token cache (shared by pretokenize and on-the-fly).

`SampleTokenizer` tokenises records with the Processor of one `Recipe` (worldvla/data/processor.py: the
text, image, action and state tokenizers, resolution and statistics; the tokenizer files are given as a
folder), the one the policy prompts with. It tokenises each image file once (VQ-GAN calls are batched) and
picks the builder by sample kind: world-model samples (an image in the assistant turn) may use other
min/max than action-model samples (RynnVLA-002's pretokenize path did, official_format.md §10.1).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from worldvla.data.frame_cache import frame_key
from worldvla.data.processor import Processor
from worldvla.data.sequence import RecordError, Sample, sample_kind
from worldvla.recipe import (  # noqa: F401  (re-exported: the tokenizer files are the Recipe's)
    TOKENIZER_FILES,
    Recipe,
    same_stats,
    sha256_file,
    stats_of,
    tokenizer_files,
)
from worldvla.tokenizers.image import codes_to_tokens, resize_square, to_rgb_array

log = logging.getLogger(__name__)


def vqgan_fingerprint(recipe: Recipe) -> dict:
    """What the VQ codes of a frame depend on (the key of a frame cache): the VQ-GAN part of the recipe's
    fingerprint (needs its tokenizer hashes, Recipe.with_tokenizer)."""
    fp = recipe.fingerprint()
    return {key: fp[key] for key in ("vqgan.yaml_sha256", "vqgan.ckpt_sha256", "resolution")}


def with_tokenizer_files(recipe: Recipe, path: str | Path) -> Recipe:
    """`recipe` with the sha256 of the tokenizer files in `path`; a recipe that already records the hashes of
    other files is refused (its tokens would not be the ones it describes)."""
    bound = recipe.with_tokenizer(path)
    if recipe.tokenizer_sha256 and recipe.differing(bound, ["tokenizer_sha256"]):
        changed = [f"tokenizer_sha256.{name}: {want[:12]} vs {bound.tokenizer_sha256.get(name, 'missing')[:12]}"
                   for name, want in sorted(recipe.tokenizer_sha256.items()) if bound.tokenizer_sha256.get(name) != want]
        raise ValueError(f"{path}: the tokenizer files differ from the ones the recipe records "
                         f"({'; '.join(changed) or 'tokenizer_sha256'})")
    return bound


def media_key(item, base_dir: Path | None) -> str:
    path = Path(item)
    return str(base_dir / path if base_dir is not None else path)


def fit_frame(image: np.ndarray, resolution: int, resize: bool) -> np.ndarray:
    """A frame for the VQ-GAN: as it is, or (resize) resized to the square resolution (RynnVLA-002's LeRobot
    path: PIL bicubic, no crop). Without resize a frame of another size is a ValueError naming the option."""
    if resize:
        return resize_square(image, resolution)
    if image.shape[:2] != (resolution, resolution):
        raise ValueError(f"frame is {image.shape[1]}x{image.shape[0]} px, the model resolution is {resolution}: "
                         f"resize it (PIL bicubic to {resolution}x{resolution}) with tokenizer.resize=true "
                         f"(pretokenize) / data.resize=true (training), or import the LeRobot data with "
                         f"resize={resolution}")
    return image


class SampleTokenizer:
    """`build(record, name) -> Sample`; `prefetch(records)` tokenises their images in batches first."""

    def __init__(self, recipe: Recipe, tokenizer: str | Path, base_dir: str | Path | None = None, cache_size: int = 0,
                 frame_cache=None, device: str = "cpu", image_batch: int = 1, resize: bool = False):
        """`tokenizer`: the folder of the recipe's tokenizer files; `cache_size`: images kept in memory
        (0 = unbounded); `frame_cache`: a FrameCache to read codes from; `device`: where the VQ-GAN runs;
        `image_batch`: images per VQ-GAN call (prefetch); `resize`: frames of another size are resized to the
        recipe's resolution (`fit_frame`) instead of refused."""
        self.recipe = recipe
        self.image_batch = max(1, image_batch)
        self.resize = resize
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.processor = Processor.from_folder(recipe, tokenizer, device=device, image_tokens=self._image_tokens)
        self.text, self.image, self.builders = self.processor.text, self.processor.images, self.processor.builders
        self.cache: OrderedDict[str, list[int]] = OrderedDict()
        self.cache_size = cache_size
        self.frame_cache = frame_cache
        self.n_encoded = 0

    # -- images -------------------------------------------------------------------------------
    def _load(self, key: str, where: str) -> np.ndarray:
        path = Path(key)
        if not path.is_file():
            trj = path.parent.parent
            raise RecordError(f"{where}: image file not found: {path} (trajectory {trj.name} of task {trj.parent.name})")
        try:
            image = to_rgb_array(path)
        except OSError as err:
            raise RecordError(f"{where}: cannot read image {path}: {err}") from None
        try:
            return fit_frame(image, self.recipe.resolution, self.resize)
        except ValueError as err:
            raise RecordError(f"{where}: image {path}: {err}") from None

    def _store(self, key: str, tokens: list[int]) -> None:
        self.cache[key] = tokens
        if self.cache_size and len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    def prefetch(self, records: list[tuple[str, dict]]) -> None:
        """Tokenise every not-yet-cached image of `records` ((name, record) pairs), batched."""
        todo: dict[str, str] = {}
        for name, record in records:
            for item in record.get("image") or []:
                if isinstance(item, (str, Path)):
                    key = media_key(item, self.base_dir)
                    if key not in self.cache and key not in todo:
                        todo[key] = name
        keys = list(todo)
        for i in range(0, len(keys), self.image_batch):
            chunk = keys[i: i + self.image_batch]
            arrays = [self._load(k, f"record {todo[k]}") for k in chunk]
            try:
                codes = self.image.encode(arrays)
            except ValueError as err:
                raise RecordError(f"record {todo[chunk[0]]}: images {chunk[0]}...: {err}") from None

            for key, c in zip(chunk, codes):
                self._store(key, codes_to_tokens(c, self.image.vocab))
            self.n_encoded += len(chunk)

    def _image_tokens(self, item) -> list[int]:
        if not isinstance(item, (str, Path)):
            return self.image.image_to_tokens(item)
        key = str(Path(item))
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        if self.frame_cache is not None and Path(key).is_file():
            fkey = frame_key(key)
            if fkey in self.frame_cache:
                tokens = codes_to_tokens(self.frame_cache.codes(fkey), self.image.vocab)
                self._store(key, tokens)
                return tokens
        tokens = self.image.image_to_tokens(self._load(key, "record"))
        self.n_encoded += 1
        self._store(key, tokens)
        return tokens

    # -- samples ------------------------------------------------------------------------------
    def build(self, record: dict, name: str = "", prefetch: bool = True) -> tuple[Sample, str]:
        """(Sample, kind) for a training record; errors name the record and the media file."""
        kind = sample_kind(record)
        if prefetch and self.frame_cache is None:
            self.prefetch([(name, record)])
        return self.builders[kind].build(record, training=True, base_dir=self.base_dir, name=name), kind
