"""Triton kernels for fastdiff's fused ops, installed as ``fastdiff.triton_kernels`` (README, Backends).

One module per op (``sampler_step``, the one step of every sampler, ``q_sample``, ``posterior_mean_variance``,
``randn_like``), each exposing a launcher named like the module that takes exactly the positional
arguments of ``fastdiff.ops.<op>.reference`` and returns what it returns. The per-element math lives
once in ``_sampler_math``; the coefficient table's columns in ``_coefs``; host-side tiling in ``_launch``.
Modules are imported lazily by ``fastdiff.ops.backend`` so importing this package needs no GPU.
"""
