"""Ray lives here only: sweeps as Tune trials, the results actor, and (later) scale-out."""
