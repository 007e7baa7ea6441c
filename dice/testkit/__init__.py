"""Test tooling, the layer above evaluation/: tiny random-weight pipelines of every family built in code (tiny),
a writer of single-file checkpoints (single_file), small captioned image folders (data), the random-weight plumbing
demos (plumbing_demo, demo_eval) and the rehearsal of every launch.sh recipe on those stand-ins (rehearsal).
The tests, the rehearsal and the plumbing demos use it; training and sampling never do."""
