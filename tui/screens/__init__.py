"""The console's screens; each is imported by `tui.app`."""

__all__: list[str] = []
