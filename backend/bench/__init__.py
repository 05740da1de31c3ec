"""`animate4d bench ...`: measurements that belong in docs/BENCHMARKS.md, never in tests."""
