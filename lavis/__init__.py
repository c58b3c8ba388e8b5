"""RegionBLIP framework. Importing the package registers the built-in models, datasets, tasks and runners."""

from lavis import datasets, models, processors, runners, tasks  # noqa: F401

__version__ = "0.1.0"
