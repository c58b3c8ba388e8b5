# Importing registers the encoders ("eva_vit", "pointbert"), the "regionblip" model and its region kinds.
from lavis.models import eva_vit, pointbert, regionblip  # noqa: F401
