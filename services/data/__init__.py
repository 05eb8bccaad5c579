"""Trial data: the `Trial` model, reading and validating ADaM-lite files, the bundled demo
trials, cohorts and their filter language, and Table 1."""
