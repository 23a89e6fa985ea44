"""`satupintu status`: the NOC's terminal view of the exporter (pure parsing and rates, thin I/O)."""
