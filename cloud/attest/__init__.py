"""Parity attestation: paired TOST + Holm across tasks, validity gates, numeric parity,
an in-toto Statement v1 in a DSSE envelope (Ed25519), served by the control plane.

Submodules are imported on use (`cloud.attest.stats`, `.gates`, `.statement`,
`.campaign`, `.report`, `.service`, `.cli`) so this package stays light.
"""

__all__: list[str] = []
