"""The Textual operator console; talks only to the cloud admin gRPC API."""

__all__: list[str] = []
