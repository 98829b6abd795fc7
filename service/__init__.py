"""interprune's service shell: the job pipeline, the report, the gRPC server and client, and the CLI."""
