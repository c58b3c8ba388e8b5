from lavis.runners import runner  # noqa: F401  (registers "epoch_runner")
