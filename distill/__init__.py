"""In the cloud: environments, replay, world model, MPPI teacher, DAgger student,
ONNX export and bundle packaging. Imports `runtime` only for sessions and bundles.

The public modules (import them directly; this file stays light, importing no torch):

* `distill.envs` — `make_env(env_id, variant)`, `env_spec`, `EnvBatch`
* `distill.replay` — `Trajectory`, `ReplayBuffer` (.npz, ``edgeflux.replay/v1``)
* `distill.teachers` — the `Teacher` / `WorldModel` Protocols, `OracleMPPITeacher`,
  `WorldModelTeacher`
* `distill.evaluate` — `episode_returns(env_id, policy, seeds, variant)`, `OnnxPolicy`
* `distill.mppi`, `distill.world_model`, `distill.train_wm`, `distill.student`,
  `distill.dagger`, `distill.export`, `distill.package`, `distill.pipeline`
* `distill.errors` — every error type
"""

__all__ = [
    "dagger",
    "envs",
    "errors",
    "evaluate",
    "export",
    "mppi",
    "package",
    "pipeline",
    "replay",
    "student",
    "teachers",
    "train_wm",
    "world_model",
]
