"""In the cloud: environments, replay, world model, MPPI teacher, DAgger student,
ONNX export and bundle packaging. Imports `runtime` only for writing bundles."""

__all__: list[str] = []
