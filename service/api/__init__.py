"""The gRPC server: servicer, conversions between store records and messages, submit-time validation."""
