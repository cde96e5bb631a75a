"""The PyTorch reference Adam-mini's trajectories: the fixture file's format
(``fixture_io``) and the script that regenerates it (needs torch)."""
