"""The services `edgeflux cloud up` mounts on the control plane besides its own.

Each entry is ``"module:function"``; the plane calls ``function(server, plane)``,
which adds its gRPC servicers and returns their full service names (see
`cloud.server.plane`). An entry whose module is not installed is skipped with one
log line. Add a line here to mount a new service; the server package itself names
none of them, so each service may build on it.
"""

from __future__ import annotations

__all__ = ["PLANE_SERVICES"]

PLANE_SERVICES: tuple[str, ...] = (
    "cloud.attest.service:register",
    "cloud.router.service:register",
    "cloud.rollouts.service:register",
    "cloud.recordings.service:register",
)
