from lavis.processors import point_processors  # noqa: F401  (registers processors)
