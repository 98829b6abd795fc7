"""The device agent: its gRPC server, the benchmark it runs, the client the server uses to reach it, and the
pipeline targets (``agent:NAME``) built on that client."""
