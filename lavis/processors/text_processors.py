"""Caption cleaning as BLIP does it, with an optional prompt prefix.

BLIP's cleaning: lowercase; replace each of . ! " ( ) * # : ; ~ with a space; collapse runs of whitespace; strip;
keep the first `max_words` words. Commas, apostrophes, hyphens and question marks stay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lavis.common.registry import PROCESSORS

_DROPPED = re.compile(r"[.!\"()*#:;~]")
_SPACES = re.compile(r"\s+")


def clean_caption(text: str, max_words: int) -> str:
    text = _SPACES.sub(" ", _DROPPED.sub(" ", text.lower())).strip()
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


@dataclass
class CaptionConfig:
    max_words: int = 50
    prompt: str = ""  # prepended to every cleaned caption, e.g. "a photo of "


@PROCESSORS.register("blip_caption")
class CaptionProcessor:
    Config = CaptionConfig

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: CaptionConfig) -> CaptionProcessor:
        return cls(cfg)

    def __call__(self, text: str) -> str:
        """The cleaned caption with the prompt; an empty string when nothing is left (the dataset rejects it)."""
        cleaned = clean_caption(text, self.cfg.max_words)
        return self.cfg.prompt + cleaned if cleaned else ""
