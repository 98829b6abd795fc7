from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceInfo(_message.Message):
    __slots__ = ("name", "hostname", "kind", "model", "cpu", "cpu_cores", "memory_bytes", "gpu", "driver_version", "cuda_version", "tensorrt_version", "onnxruntime_version", "jetpack", "l4t", "power_mode", "clocks", "backends", "platform", "source")
    class ClocksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORRT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    JETPACK_FIELD_NUMBER: _ClassVar[int]
    L4T_FIELD_NUMBER: _ClassVar[int]
    POWER_MODE_FIELD_NUMBER: _ClassVar[int]
    CLOCKS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    hostname: str
    kind: str
    model: str
    cpu: str
    cpu_cores: int
    memory_bytes: int
    gpu: str
    driver_version: str
    cuda_version: str
    tensorrt_version: str
    onnxruntime_version: str
    jetpack: str
    l4t: str
    power_mode: str
    clocks: _containers.ScalarMap[str, str]
    backends: _containers.RepeatedScalarFieldContainer[str]
    platform: str
    source: str
    def __init__(self, name: _Optional[str] = ..., hostname: _Optional[str] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., cpu: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpu: _Optional[str] = ..., driver_version: _Optional[str] = ..., cuda_version: _Optional[str] = ..., tensorrt_version: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., jetpack: _Optional[str] = ..., l4t: _Optional[str] = ..., power_mode: _Optional[str] = ..., clocks: _Optional[_Mapping[str, str]] = ..., backends: _Optional[_Iterable[str]] = ..., platform: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...
