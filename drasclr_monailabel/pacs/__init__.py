"""The hospital path: a PACS reached over DICOMweb (Orthanc for tests and trials).

- :mod:`.connection`: URL, credentials and timeouts of a DICOMweb server; a checked client that
  turns a wrong password, a refused connection or a silent server into one clear error.
- :mod:`.orthanc`: run a throw-away Orthanc (Debian package, DICOMweb plugin) on loopback.
- :mod:`.upload`: a CT volume as a classic DICOM series, stored with STOW-RS.
- :mod:`.series`: find and download series, read them back as volumes.
- :mod:`.seg`: label maps as DICOM Segmentation objects (written with highdicom, no dcmqi) and back.
"""
