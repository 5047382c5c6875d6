"""EdgeFlux: the CLI root (`edgeflux ...`), the demo orchestration and the version.

This package mounts the commands that each component package owns; it imports
them lazily so that `edgeflux --help` stays fast and works on a robot that has
only the `device` extra installed.
"""

from edgeflux._version import __version__

__all__ = ["__version__"]
