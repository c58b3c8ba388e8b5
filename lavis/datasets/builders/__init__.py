from lavis.datasets.builders import point_builders  # noqa: F401  (registers dataset builders)
