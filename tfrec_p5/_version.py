"""The package version, in one place: ``setup.cfg`` reads it, exports and backbones record it."""

__version__ = "0.1.0"
"""The installed version of tfrec_p5; every export's ``metadata.json`` and every backbone's
``manifest.json`` record it (``package_version``), so a model says which code made it."""
