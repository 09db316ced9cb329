"""Lightning wiring, the CLI, sweeps and launchers: where models/ and data/ meet files and processes."""
