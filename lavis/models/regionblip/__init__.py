"""RegionBLIP (see README.md in this folder). Importing registers the model `regionblip` and the region kinds."""

from lavis.models.regionblip import region  # noqa: F401  (registers box2d, box3d_corners)
from lavis.models.regionblip.model import RegionBLIP  # noqa: F401  (registers "regionblip")
