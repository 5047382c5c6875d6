"""Protocol Buffers sources (`*.proto`) and their generated, committed Python modules.

Regenerate with `python -m protos.generate`; CI fails if that changes anything.
"""
