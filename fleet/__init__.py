"""On the robot: the fleet agent (MQTT transport, gRPC client, telemetry spool,
update state machine, TUF client). Imports `runtime` and `protos` only."""

__all__: list[str] = []
