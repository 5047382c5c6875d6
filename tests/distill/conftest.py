from __future__ import annotations

import torch

# The suite shares 2 cores with other work: one intra-op thread avoids oversubscription
# (which made small updates 10x slower) and keeps results bit-reproducible.
torch.set_num_threads(1)
