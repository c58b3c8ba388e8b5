"""Point-BERT point-cloud encoder: `sampling` (FPS, KNN, grouping) and `encoder` (the registered `pointbert`)."""

from lavis.models.pointbert import encoder, sampling  # noqa: F401 - importing registers the encoder

__all__ = ["encoder", "sampling"]
