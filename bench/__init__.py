"""flowprobe benchmarks: ``python -m bench SUBCOMMAND`` (see ``python -m bench --help``)."""
