"""`python -m benchmarks.throughput [--quick]`: what the sweep costs around the training, in one run.

Parts, one module each: `compute` (the machine, the matmul ceiling, the bare training step with
its FLOPs, the data path), `trials` (the same training bare and inside one Tune trial, the fixed
costs of a trial, and the memory of two concurrent trials sharing the cache), `memory` (what a
trial process holds, read from /proc), `sweep` (the quick ablation command against its trials'
summed training time, and its MLflow logging), `report` (the table and the JSON file) and `cli`
(the command). `--quick` runs every part on tiny sizes (the test keeps it working).
"""
