#!/usr/bin/env bash
# Bring your own model: a policy you trained and exported from PyTorch becomes a signed
# EdgeFlux bundle, is verified the way a robot verifies it, and runs in the runtime's
# control loop on a simulated Pendulum robot.
#
#   examples/bring_your_own_model.sh [WORKDIR]      # default: ./byom
#
# Every step is one command; read them top to bottom.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
WORK="${1:-byom}"
mkdir -p "$WORK" && cd "$WORK"

# 1. Your PyTorch policy, exported to one ONNX file (obs[batch, 3] -> action[batch, 1]).
"$PY" "$HERE/bring_your_own_model.py" policy.onnx

# 2. A signing key, and a robot (here a directory) that trusts it.
edgeflux bundle keygen --private keys/signing.pem --public keys/signing.pub
edgeflux bundle trust add keys/signing.pub --root robot

# 3. The bundle: the graph plus what it cannot say (bounds, rate, deadline, fallback),
#    from the commented spec template (docs/bundle-spec.md); then sign it.
edgeflux bundle create --onnx policy.onnx --spec "$HERE/bundle-spec.toml" \
    --out bundles/pendulum-1.0.0
edgeflux bundle sign bundles/pendulum-1.0.0 --key keys/signing.pem

# 4. Verify it as the robot will: signature, every file's digest, manifest, graph.
edgeflux bundle verify bundles/pendulum-1.0.0 --root robot

# 5. Run it: five seconds of the control loop against a gymnasium Pendulum.
edgeflux runtime run --root robot --bundle bundles/pendulum-1.0.0 \
    --adapter gym --adapter-option env=Pendulum-v1 --duration 5
