"""The forethought command line, the experiment loop, shipped experiments and benchmarks."""
