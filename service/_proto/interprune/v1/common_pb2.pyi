from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_FP32: _ClassVar[Precision]
    PRECISION_FP16: _ClassVar[Precision]
    PRECISION_INT8: _ClassVar[Precision]

class LocalDevice(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOCAL_DEVICE_UNSPECIFIED: _ClassVar[LocalDevice]
    LOCAL_DEVICE_CPU: _ClassVar[LocalDevice]
    LOCAL_DEVICE_CUDA: _ClassVar[LocalDevice]
    LOCAL_DEVICE_TENSORRT: _ClassVar[LocalDevice]
PRECISION_UNSPECIFIED: Precision
PRECISION_FP32: Precision
PRECISION_FP16: Precision
PRECISION_INT8: Precision
LOCAL_DEVICE_UNSPECIFIED: LocalDevice
LOCAL_DEVICE_CPU: LocalDevice
LOCAL_DEVICE_CUDA: LocalDevice
LOCAL_DEVICE_TENSORRT: LocalDevice

class Target(_message.Message):
    __slots__ = ("local", "agent")
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    local: LocalDevice
    agent: str
    def __init__(self, local: _Optional[_Union[LocalDevice, str]] = ..., agent: _Optional[str] = ...) -> None: ...

class Accuracy(_message.Message):
    __slots__ = ("top1", "top5", "num_images")
    TOP1_FIELD_NUMBER: _ClassVar[int]
    TOP5_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    top1: float
    top5: float
    num_images: int
    def __init__(self, top1: _Optional[float] = ..., top5: _Optional[float] = ..., num_images: _Optional[int] = ...) -> None: ...

class LatencyRow(_message.Message):
    __slots__ = ("target", "model", "backend", "batch_size", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_ips", "threads", "precision", "device", "error", "stable")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_IPS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    target: str
    model: str
    backend: str
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_ips: float
    threads: int
    precision: str
    device: str
    error: str
    stable: bool
    def __init__(self, target: _Optional[str] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., batch_size: _Optional[int] = ..., runs: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., throughput_ips: _Optional[float] = ..., threads: _Optional[int] = ..., precision: _Optional[str] = ..., device: _Optional[str] = ..., error: _Optional[str] = ..., stable: _Optional[bool] = ...) -> None: ...
