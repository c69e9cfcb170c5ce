import os

# Triton reads this at import: every kernel test runs under the interpreter on the CPU.
os.environ.setdefault("TRITON_INTERPRET", "1")
