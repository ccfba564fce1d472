"""The `hplab` command and its subcommands (bench, matrix, mutants, repeat, repro): front ends
over the engine, the suites and the reports."""
