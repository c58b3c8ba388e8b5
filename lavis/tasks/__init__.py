from lavis.tasks import pretrain  # noqa: F401  (registers "pretrain")
