"""Not part of the test suite: the mutation runner is run by hand (see
run_mutants.py); pytest's --doctest-modules would otherwise import it."""

collect_ignore_glob = ['*.py']
