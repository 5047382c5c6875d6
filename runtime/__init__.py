"""On the robot: bundle format and verification, trust store, A/B slots, ONNX session,
control loop, safety envelope, robot I/O adapters, flashing.

Also the base layer every other package may build on: atomic file writes
(`runtime.atomicio`) and typed configuration loading (`runtime.config`).
Never imports torch, textual, sqlalchemy or anything from `cloud`.
"""

__all__: list[str] = []
