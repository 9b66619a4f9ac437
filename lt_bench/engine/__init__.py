"""Training engines other than Lightning's loop (the GPU-resident fast path)."""
