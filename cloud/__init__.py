"""In the cloud: gRPC control plane, store, MQTT ingest, rollouts, TUF repository,
parity attestation, ATP router, fleet PKI, broker management."""

__all__: list[str] = []
