"""Networks: the location-conditioned DrasCLR encoder, its heads, and exported-encoder I/O."""

from drasclr_monailabel.models.condconv import CondConv3d
from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.models.export import load_encoder, read_metadata, save_encoder
from drasclr_monailabel.models.heads import ProjectionHead
from drasclr_monailabel.models.intensity import LUNG_WINDOW, IntensityWindow

__all__ = [
           "LUNG_WINDOW",
           "CondConv3d",
           "DrasclrEncoder",
           "EncoderArchitecture",
           "IntensityWindow",
           "ProjectionHead",
           "load_encoder",
           "read_metadata",
           "save_encoder",
]
