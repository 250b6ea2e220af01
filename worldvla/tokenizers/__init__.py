"""Text, image and action tokenizers of the official WorldVLA token format."""

from worldvla.tokenizers.action import ActionTokenizer, NormStats, StateTokenizer, load_stats
from worldvla.tokenizers.image import ImageTokenizer, codes_to_tokens, image_token_count, tokens_to_codes
from worldvla.tokenizers.text import TextTokenizer

__all__ = [
    "ActionTokenizer",
    "ImageTokenizer",
    "NormStats",
    "StateTokenizer",
    "TextTokenizer",
    "codes_to_tokens",
    "image_token_count",
    "load_stats",
    "tokens_to_codes",
]
