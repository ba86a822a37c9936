"""The primitives the knobs are made of: mask parametrizations and magnitude masks
(``prune``), fake quantization and its codes (``quantize``), truncated-SVD factorization
(``factorize``) and torch-pruning's channel pruning (``structured``). Torch only: nothing
here knows a plan, a knob or the registry (``slimtune.knobs`` uses them,
``slimtune.compress.apply`` composes the knobs)."""
