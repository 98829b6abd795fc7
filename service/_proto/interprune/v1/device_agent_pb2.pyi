from service._proto.interprune.v1 import common_pb2 as _common_pb2
from service._proto.interprune.v1 import device_pb2 as _device_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlobInfo(_message.Message):
    __slots__ = ("size_bytes", "sha256")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    sha256: str
    def __init__(self, size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class BenchmarkSettings(_message.Message):
    __slots__ = ("batch_sizes", "precision", "backend", "seconds_per_batch", "warmup_seconds", "input_shape", "model", "evaluation", "calibration", "threads", "label")
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SECONDS_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    WARMUP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    precision: _common_pb2.Precision
    backend: str
    seconds_per_batch: float
    warmup_seconds: float
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    model: BlobInfo
    evaluation: BlobInfo
    calibration: BlobInfo
    threads: int
    label: str
    def __init__(self, batch_sizes: _Optional[_Iterable[int]] = ..., precision: _Optional[_Union[_common_pb2.Precision, str]] = ..., backend: _Optional[str] = ..., seconds_per_batch: _Optional[float] = ..., warmup_seconds: _Optional[float] = ..., input_shape: _Optional[_Iterable[int]] = ..., model: _Optional[_Union[BlobInfo, _Mapping]] = ..., evaluation: _Optional[_Union[BlobInfo, _Mapping]] = ..., calibration: _Optional[_Union[BlobInfo, _Mapping]] = ..., threads: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class BenchmarkRequest(_message.Message):
    __slots__ = ("settings", "model_chunk", "evaluation_chunk", "calibration_chunk")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHUNK_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_CHUNK_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_CHUNK_FIELD_NUMBER: _ClassVar[int]
    settings: BenchmarkSettings
    model_chunk: bytes
    evaluation_chunk: bytes
    calibration_chunk: bytes
    def __init__(self, settings: _Optional[_Union[BenchmarkSettings, _Mapping]] = ..., model_chunk: _Optional[bytes] = ..., evaluation_chunk: _Optional[bytes] = ..., calibration_chunk: _Optional[bytes] = ...) -> None: ...

class BenchmarkResult(_message.Message):
    __slots__ = ("device", "backend", "precision", "latency", "accuracy", "build_seconds", "notes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BUILD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    device: _device_pb2.DeviceInfo
    backend: str
    precision: str
    latency: _containers.RepeatedCompositeFieldContainer[_common_pb2.LatencyRow]
    accuracy: _common_pb2.Accuracy
    build_seconds: float
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device: _Optional[_Union[_device_pb2.DeviceInfo, _Mapping]] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., latency: _Optional[_Iterable[_Union[_common_pb2.LatencyRow, _Mapping]]] = ..., accuracy: _Optional[_Union[_common_pb2.Accuracy, _Mapping]] = ..., build_seconds: _Optional[float] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...
