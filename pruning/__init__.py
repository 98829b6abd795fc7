"""interprune's compression engine: criteria, allocation, surgery, reconstruction, fine-tuning, measures.

PyTorch only; knows nothing of gRPC, jobs or exporters. Entry point: ``pruning.compress.compress(spec)``.
"""
__version__ = "0.1.0"
