"""Sibling methods built on the library's quantizers and kernels: ACS coreset QAT (`acs`) and
RCAQ, the regularized classification-aware distributed quantizer (`rcaq`)."""
