"""The control plane's gRPC server (grpc.aio, mTLS).

Public names: `ControlPlane` (builds and runs the server), `Plane` (what servicers
share: home, config, store, TUF repository, signer, fleet watch), `Identity`.
Import from the submodules (`cloud.server.app`, `cloud.server.auth`); this package
file stays light.
"""

__all__ = ["ControlPlane", "Identity", "Plane"]


def __getattr__(name: str) -> object:
    if name in ("ControlPlane", "Plane"):
        from cloud.server import app

        return getattr(app, name)
    if name == "Identity":
        from cloud.server.auth import Identity

        return Identity
    raise AttributeError(name)
