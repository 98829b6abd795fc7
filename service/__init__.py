"""interprune's service: the gRPC API, the job system, the device agent, the client and the CLI, in layers
(see ARCHITECTURE.md). The pipeline a job runs is the top-level ``pipeline`` package."""
