"""CT input: read NIfTI / NRRD / MHA / DICOM series into a validated :class:`CTVolume`."""

from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.io.validate import validate_ct

__all__ = ["CTVolume", "read_ct", "validate_ct"]
