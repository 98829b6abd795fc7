"""The service's base layer: status-coded errors, authentication, the wire format (generated stubs and the spec
conversion both ends share). Imports nothing else of ``service``."""
