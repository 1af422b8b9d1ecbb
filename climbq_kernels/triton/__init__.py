"""Triton kernels, one module per op family; each registers its kernels in `registry`."""
