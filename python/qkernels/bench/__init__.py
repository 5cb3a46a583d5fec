"""The benchmark harness behind `qkernels-bench` (method: shared/DESIGN.md section 6)."""
