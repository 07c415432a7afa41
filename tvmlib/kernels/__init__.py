"""Flash attention with a forward-mode tangent (JVP) and a backward through it.

``attention`` and ``attention_with_jvp`` run Triton kernels (CUDA, or the CPU interpreter with
``TRITON_INTERPRET=1``); ``reference`` holds the plain-PyTorch definitions they are tested
against. The Triton module itself (``tvmlib.kernels.jvp_attention``) is imported on first use.
"""

from tvmlib.kernels.autograd import attention, attention_with_jvp
from tvmlib.kernels.reference import (
    attention_ref,
    blockwise_jvp_attention,
    jvp_grads_ref,
    jvp_ref,
    lse_mu_ref,
)

__all__ = [
    "attention",
    "attention_ref",
    "attention_with_jvp",
    "blockwise_jvp_attention",
    "jvp_grads_ref",
    "jvp_ref",
    "lse_mu_ref",
]
