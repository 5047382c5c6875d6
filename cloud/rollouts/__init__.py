"""Staged rollouts: waves of devices, failure thresholds that pause, abort with rollback.

Submodules are imported on use so this package stays light: `cloud.rollouts.engine`
(the pure wave engine and state machine), `.service` (the admin-API handler and the
driver task on the control plane), `.cli` (``edgeflux rollout``).
"""

__all__: list[str] = []
