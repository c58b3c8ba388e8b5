# registers "pretrain", "captioning", "zero_shot_classification" and "vqa"
from lavis.tasks import captioning, pretrain, vqa, zero_shot  # noqa: F401
