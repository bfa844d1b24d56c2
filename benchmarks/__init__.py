"""How the pipeline is measured, not what it does: the synthetic AU benchmark harness, its oracle and judges, and scripts."""
