"""The ground floor: errors and exit codes, atomic files, running external programs, console and GitHub Actions output, the task boundary, signals."""
