from lavis.tasks import captioning, pretrain  # noqa: F401  (registers "pretrain" and "captioning")
