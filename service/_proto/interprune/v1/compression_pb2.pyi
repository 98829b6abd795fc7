import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from service._proto.interprune.v1 import common_pb2 as _common_pb2
from service._proto.interprune.v1 import device_pb2 as _device_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_KIND_UNSPECIFIED: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_MODEL: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_DATASET: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_PLAN: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_WEIGHTS: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_ONNX: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_REPORT_JSON: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_REPORT_HTML: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_OTHER: _ClassVar[ArtifactKind]

class TargetMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TARGET_METRIC_UNSPECIFIED: _ClassVar[TargetMetric]
    TARGET_METRIC_MACS: _ClassVar[TargetMetric]
    TARGET_METRIC_PARAMS: _ClassVar[TargetMetric]
    TARGET_METRIC_LATENCY: _ClassVar[TargetMetric]

class Allocation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALLOCATION_UNSPECIFIED: _ClassVar[Allocation]
    ALLOCATION_UNIFORM: _ClassVar[Allocation]
    ALLOCATION_GLOBAL: _ClassVar[Allocation]
    ALLOCATION_SENSITIVITY: _ClassVar[Allocation]
    ALLOCATION_LATENCY: _ClassVar[Allocation]

class BatchNormMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_NORM_MODE_UNSPECIFIED: _ClassVar[BatchNormMode]
    BATCH_NORM_MODE_AUTO: _ClassVar[BatchNormMode]
    BATCH_NORM_MODE_ON: _ClassVar[BatchNormMode]
    BATCH_NORM_MODE_OFF: _ClassVar[BatchNormMode]

class RefitScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFIT_SCOPE_UNSPECIFIED: _ClassVar[RefitScope]
    REFIT_SCOPE_CONSUMERS: _ClassVar[RefitScope]
    REFIT_SCOPE_DOWNSTREAM: _ClassVar[RefitScope]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class FailureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_KIND_UNSPECIFIED: _ClassVar[FailureKind]
    FAILURE_KIND_INVALID_INPUT: _ClassVar[FailureKind]
    FAILURE_KIND_EXPORT_CHECK: _ClassVar[FailureKind]
    FAILURE_KIND_TIMED_OUT: _ClassVar[FailureKind]
    FAILURE_KIND_CRASHED: _ClassVar[FailureKind]
    FAILURE_KIND_SERVER_STOPPED: _ClassVar[FailureKind]
    FAILURE_KIND_INTERNAL: _ClassVar[FailureKind]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_STATE: _ClassVar[EventType]
    EVENT_TYPE_PROGRESS: _ClassVar[EventType]
ARTIFACT_KIND_UNSPECIFIED: ArtifactKind
ARTIFACT_KIND_MODEL: ArtifactKind
ARTIFACT_KIND_DATASET: ArtifactKind
ARTIFACT_KIND_PLAN: ArtifactKind
ARTIFACT_KIND_WEIGHTS: ArtifactKind
ARTIFACT_KIND_ONNX: ArtifactKind
ARTIFACT_KIND_REPORT_JSON: ArtifactKind
ARTIFACT_KIND_REPORT_HTML: ArtifactKind
ARTIFACT_KIND_OTHER: ArtifactKind
TARGET_METRIC_UNSPECIFIED: TargetMetric
TARGET_METRIC_MACS: TargetMetric
TARGET_METRIC_PARAMS: TargetMetric
TARGET_METRIC_LATENCY: TargetMetric
ALLOCATION_UNSPECIFIED: Allocation
ALLOCATION_UNIFORM: Allocation
ALLOCATION_GLOBAL: Allocation
ALLOCATION_SENSITIVITY: Allocation
ALLOCATION_LATENCY: Allocation
BATCH_NORM_MODE_UNSPECIFIED: BatchNormMode
BATCH_NORM_MODE_AUTO: BatchNormMode
BATCH_NORM_MODE_ON: BatchNormMode
BATCH_NORM_MODE_OFF: BatchNormMode
REFIT_SCOPE_UNSPECIFIED: RefitScope
REFIT_SCOPE_CONSUMERS: RefitScope
REFIT_SCOPE_DOWNSTREAM: RefitScope
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
FAILURE_KIND_UNSPECIFIED: FailureKind
FAILURE_KIND_INVALID_INPUT: FailureKind
FAILURE_KIND_EXPORT_CHECK: FailureKind
FAILURE_KIND_TIMED_OUT: FailureKind
FAILURE_KIND_CRASHED: FailureKind
FAILURE_KIND_SERVER_STOPPED: FailureKind
FAILURE_KIND_INTERNAL: FailureKind
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_STATE: EventType
EVENT_TYPE_PROGRESS: EventType

class Artifact(_message.Message):
    __slots__ = ("name", "id", "display_name", "kind", "size_bytes", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    display_name: str
    kind: ArtifactKind
    size_bytes: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., display_name: _Optional[str] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., size_bytes: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ArtifactHeader(_message.Message):
    __slots__ = ("display_name", "kind", "size_bytes", "sha256")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    kind: ArtifactKind
    size_bytes: int
    sha256: str
    def __init__(self, display_name: _Optional[str] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadArtifactRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ArtifactHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ArtifactHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DownloadArtifactResponse(_message.Message):
    __slots__ = ("artifact", "chunk")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    chunk: bytes
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "kinds")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    kinds: _containers.RepeatedScalarFieldContainer[ArtifactKind]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[ArtifactKind, str]]] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts", "next_page_token")
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    next_page_token: str
    def __init__(self, artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteArtifactRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteArtifactResponse(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("arch", "weights", "num_classes", "arch_kwargs", "input_shape", "model", "external_data")
    class ArchKwargsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    class ExternalDataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARCH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    ARCH_KWARGS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_DATA_FIELD_NUMBER: _ClassVar[int]
    arch: str
    weights: str
    num_classes: int
    arch_kwargs: _containers.MessageMap[str, ParamValue]
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    model: str
    external_data: _containers.ScalarMap[str, str]
    def __init__(self, arch: _Optional[str] = ..., weights: _Optional[str] = ..., num_classes: _Optional[int] = ..., arch_kwargs: _Optional[_Mapping[str, ParamValue]] = ..., input_shape: _Optional[_Iterable[int]] = ..., model: _Optional[str] = ..., external_data: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ImageSize(_message.Message):
    __slots__ = ("height", "width")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class DataSpec(_message.Message):
    __slots__ = ("artifact", "calibration_images", "evaluation_images", "finetune_images", "input_size", "mean", "std", "batch_size")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    FINETUNE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    artifact: str
    calibration_images: int
    evaluation_images: int
    finetune_images: int
    input_size: ImageSize
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    batch_size: int
    def __init__(self, artifact: _Optional[str] = ..., calibration_images: _Optional[int] = ..., evaluation_images: _Optional[int] = ..., finetune_images: _Optional[int] = ..., input_size: _Optional[_Union[ImageSize, _Mapping]] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ParamValue(_message.Message):
    __slots__ = ("bool_value", "int_value", "double_value", "string_value", "list_value", "map_value")
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAP_VALUE_FIELD_NUMBER: _ClassVar[int]
    bool_value: bool
    int_value: int
    double_value: float
    string_value: str
    list_value: ParamList
    map_value: ParamMap
    def __init__(self, bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., list_value: _Optional[_Union[ParamList, _Mapping]] = ..., map_value: _Optional[_Union[ParamMap, _Mapping]] = ...) -> None: ...

class ParamList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[ParamValue]
    def __init__(self, values: _Optional[_Iterable[_Union[ParamValue, _Mapping]]] = ...) -> None: ...

class ParamMap(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.MessageMap[str, ParamValue]
    def __init__(self, values: _Optional[_Mapping[str, ParamValue]] = ...) -> None: ...

class PruneSpec(_message.Message):
    __slots__ = ("criterion", "criterion_params", "target_metric", "target_reduction", "allocation", "round_to", "min_channels", "protected_layers", "layer_criterion", "layer_criterion_params", "layer_share", "latency_budget_ms", "latency_batch", "latency_target", "latency_margin", "allow_shortfall", "block_removal", "sensitivity_images")
    class CriterionParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    class LayerCriterionParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    CRITERION_FIELD_NUMBER: _ClassVar[int]
    CRITERION_PARAMS_FIELD_NUMBER: _ClassVar[int]
    TARGET_METRIC_FIELD_NUMBER: _ClassVar[int]
    TARGET_REDUCTION_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    ROUND_TO_FIELD_NUMBER: _ClassVar[int]
    MIN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYER_CRITERION_FIELD_NUMBER: _ClassVar[int]
    LAYER_CRITERION_PARAMS_FIELD_NUMBER: _ClassVar[int]
    LAYER_SHARE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BATCH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_TARGET_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MARGIN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_SHORTFALL_FIELD_NUMBER: _ClassVar[int]
    BLOCK_REMOVAL_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_IMAGES_FIELD_NUMBER: _ClassVar[int]
    criterion: str
    criterion_params: _containers.MessageMap[str, ParamValue]
    target_metric: TargetMetric
    target_reduction: float
    allocation: Allocation
    round_to: int
    min_channels: int
    protected_layers: _containers.RepeatedScalarFieldContainer[str]
    layer_criterion: str
    layer_criterion_params: _containers.MessageMap[str, ParamValue]
    layer_share: float
    latency_budget_ms: float
    latency_batch: int
    latency_target: _common_pb2.Target
    latency_margin: float
    allow_shortfall: bool
    block_removal: str
    sensitivity_images: int
    def __init__(self, criterion: _Optional[str] = ..., criterion_params: _Optional[_Mapping[str, ParamValue]] = ..., target_metric: _Optional[_Union[TargetMetric, str]] = ..., target_reduction: _Optional[float] = ..., allocation: _Optional[_Union[Allocation, str]] = ..., round_to: _Optional[int] = ..., min_channels: _Optional[int] = ..., protected_layers: _Optional[_Iterable[str]] = ..., layer_criterion: _Optional[str] = ..., layer_criterion_params: _Optional[_Mapping[str, ParamValue]] = ..., layer_share: _Optional[float] = ..., latency_budget_ms: _Optional[float] = ..., latency_batch: _Optional[int] = ..., latency_target: _Optional[_Union[_common_pb2.Target, _Mapping]] = ..., latency_margin: _Optional[float] = ..., allow_shortfall: _Optional[bool] = ..., block_removal: _Optional[str] = ..., sensitivity_images: _Optional[int] = ...) -> None: ...

class ReconstructSpec(_message.Message):
    __slots__ = ("enabled", "positions_per_image", "ridge", "batchnorm", "max_memory_mb", "holdout", "scope")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    RIDGE_FIELD_NUMBER: _ClassVar[int]
    BATCHNORM_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    positions_per_image: int
    ridge: float
    batchnorm: BatchNormMode
    max_memory_mb: float
    holdout: int
    scope: RefitScope
    def __init__(self, enabled: _Optional[bool] = ..., positions_per_image: _Optional[int] = ..., ridge: _Optional[float] = ..., batchnorm: _Optional[_Union[BatchNormMode, str]] = ..., max_memory_mb: _Optional[float] = ..., holdout: _Optional[int] = ..., scope: _Optional[_Union[RefitScope, str]] = ...) -> None: ...

class FinetuneSpec(_message.Message):
    __slots__ = ("epochs", "steps", "images", "minutes", "batch_size", "lr", "temperature", "alpha", "augment", "validation_images", "distillation")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MINUTES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    DISTILLATION_FIELD_NUMBER: _ClassVar[int]
    epochs: float
    steps: int
    images: int
    minutes: float
    batch_size: int
    lr: float
    temperature: float
    alpha: float
    augment: bool
    validation_images: int
    distillation: str
    def __init__(self, epochs: _Optional[float] = ..., steps: _Optional[int] = ..., images: _Optional[int] = ..., minutes: _Optional[float] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., temperature: _Optional[float] = ..., alpha: _Optional[float] = ..., augment: _Optional[bool] = ..., validation_images: _Optional[int] = ..., distillation: _Optional[str] = ...) -> None: ...

class ExportSpec(_message.Message):
    __slots__ = ("onnx", "opset", "slim", "parity_atol", "parity_images")
    ONNX_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    SLIM_FIELD_NUMBER: _ClassVar[int]
    PARITY_ATOL_FIELD_NUMBER: _ClassVar[int]
    PARITY_IMAGES_FIELD_NUMBER: _ClassVar[int]
    onnx: bool
    opset: int
    slim: bool
    parity_atol: float
    parity_images: int
    def __init__(self, onnx: _Optional[bool] = ..., opset: _Optional[int] = ..., slim: _Optional[bool] = ..., parity_atol: _Optional[float] = ..., parity_images: _Optional[int] = ...) -> None: ...

class BenchmarkSpec(_message.Message):
    __slots__ = ("skip", "targets", "batch_sizes", "threads", "seconds_per_batch", "original", "agent_eval_images", "precision")
    SKIP_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_EVAL_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    skip: bool
    targets: _containers.RepeatedCompositeFieldContainer[_common_pb2.Target]
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    threads: int
    seconds_per_batch: float
    original: bool
    agent_eval_images: int
    precision: _common_pb2.Precision
    def __init__(self, skip: _Optional[bool] = ..., targets: _Optional[_Iterable[_Union[_common_pb2.Target, _Mapping]]] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., threads: _Optional[int] = ..., seconds_per_batch: _Optional[float] = ..., original: _Optional[bool] = ..., agent_eval_images: _Optional[int] = ..., precision: _Optional[_Union[_common_pb2.Precision, str]] = ...) -> None: ...

class GateSpec(_message.Message):
    __slots__ = ("max_accuracy_drop",)
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    max_accuracy_drop: float
    def __init__(self, max_accuracy_drop: _Optional[float] = ...) -> None: ...

class ExecutionSpec(_message.Message):
    __slots__ = ("seed", "threads", "timeout_seconds", "retry_on_crash")
    SEED_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_CRASH_FIELD_NUMBER: _ClassVar[int]
    seed: int
    threads: int
    timeout_seconds: float
    retry_on_crash: bool
    def __init__(self, seed: _Optional[int] = ..., threads: _Optional[int] = ..., timeout_seconds: _Optional[float] = ..., retry_on_crash: _Optional[bool] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("model", "data", "prune", "reconstruct", "finetune", "export", "benchmark", "gate", "execution")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCT_FIELD_NUMBER: _ClassVar[int]
    FINETUNE_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    data: DataSpec
    prune: PruneSpec
    reconstruct: ReconstructSpec
    finetune: FinetuneSpec
    export: ExportSpec
    benchmark: BenchmarkSpec
    gate: GateSpec
    execution: ExecutionSpec
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., data: _Optional[_Union[DataSpec, _Mapping]] = ..., prune: _Optional[_Union[PruneSpec, _Mapping]] = ..., reconstruct: _Optional[_Union[ReconstructSpec, _Mapping]] = ..., finetune: _Optional[_Union[FinetuneSpec, _Mapping]] = ..., export: _Optional[_Union[ExportSpec, _Mapping]] = ..., benchmark: _Optional[_Union[BenchmarkSpec, _Mapping]] = ..., gate: _Optional[_Union[GateSpec, _Mapping]] = ..., execution: _Optional[_Union[ExecutionSpec, _Mapping]] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("kind", "message", "error_type", "exit_code", "signal")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    kind: FailureKind
    message: str
    error_type: str
    exit_code: int
    signal: int
    def __init__(self, kind: _Optional[_Union[FailureKind, str]] = ..., message: _Optional[str] = ..., error_type: _Optional[str] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "fraction", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    fraction: float
    message: str
    def __init__(self, stage: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class Cost(_message.Message):
    __slots__ = ("macs", "params", "size_bytes")
    MACS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    macs: int
    params: int
    size_bytes: int
    def __init__(self, macs: _Optional[int] = ..., params: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class GateVerdict(_message.Message):
    __slots__ = ("evaluated", "passed", "max_accuracy_drop", "accuracy_drop", "stage")
    EVALUATED_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    evaluated: bool
    passed: bool
    max_accuracy_drop: float
    accuracy_drop: float
    stage: str
    def __init__(self, evaluated: _Optional[bool] = ..., passed: _Optional[bool] = ..., max_accuracy_drop: _Optional[float] = ..., accuracy_drop: _Optional[float] = ..., stage: _Optional[str] = ...) -> None: ...

class LayerWidth(_message.Message):
    __slots__ = ("layer", "kept", "original")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    layer: str
    kept: int
    original: int
    def __init__(self, layer: _Optional[str] = ..., kept: _Optional[int] = ..., original: _Optional[int] = ...) -> None: ...

class JobOutputs(_message.Message):
    __slots__ = ("plan_artifact", "weights_artifact", "onnx_artifact", "report_json_artifact", "report_html_artifact")
    PLAN_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    ONNX_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    REPORT_HTML_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    plan_artifact: str
    weights_artifact: str
    onnx_artifact: str
    report_json_artifact: str
    report_html_artifact: str
    def __init__(self, plan_artifact: _Optional[str] = ..., weights_artifact: _Optional[str] = ..., onnx_artifact: _Optional[str] = ..., report_json_artifact: _Optional[str] = ..., report_html_artifact: _Optional[str] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("accuracy", "final_stage", "original_cost", "compressed_cost", "macs_reduction", "params_reduction", "latency", "gate", "timings_seconds", "layers", "outputs", "target_errors", "target_accuracy", "warnings")
    class AccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Accuracy
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Accuracy, _Mapping]] = ...) -> None: ...
    class TimingsSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TargetErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TargetAccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TargetAccuracy
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TargetAccuracy, _Mapping]] = ...) -> None: ...
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FINAL_STAGE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_COST_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_COST_FIELD_NUMBER: _ClassVar[int]
    MACS_REDUCTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_REDUCTION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    accuracy: _containers.MessageMap[str, _common_pb2.Accuracy]
    final_stage: str
    original_cost: Cost
    compressed_cost: Cost
    macs_reduction: float
    params_reduction: float
    latency: _containers.RepeatedCompositeFieldContainer[_common_pb2.LatencyRow]
    gate: GateVerdict
    timings_seconds: _containers.ScalarMap[str, float]
    layers: _containers.RepeatedCompositeFieldContainer[LayerWidth]
    outputs: JobOutputs
    target_errors: _containers.ScalarMap[str, str]
    target_accuracy: _containers.MessageMap[str, TargetAccuracy]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accuracy: _Optional[_Mapping[str, _common_pb2.Accuracy]] = ..., final_stage: _Optional[str] = ..., original_cost: _Optional[_Union[Cost, _Mapping]] = ..., compressed_cost: _Optional[_Union[Cost, _Mapping]] = ..., macs_reduction: _Optional[float] = ..., params_reduction: _Optional[float] = ..., latency: _Optional[_Iterable[_Union[_common_pb2.LatencyRow, _Mapping]]] = ..., gate: _Optional[_Union[GateVerdict, _Mapping]] = ..., timings_seconds: _Optional[_Mapping[str, float]] = ..., layers: _Optional[_Iterable[_Union[LayerWidth, _Mapping]]] = ..., outputs: _Optional[_Union[JobOutputs, _Mapping]] = ..., target_errors: _Optional[_Mapping[str, str]] = ..., target_accuracy: _Optional[_Mapping[str, TargetAccuracy]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class TargetAccuracy(_message.Message):
    __slots__ = ("original", "compressed", "backend", "precision", "device")
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    original: _common_pb2.Accuracy
    compressed: _common_pb2.Accuracy
    backend: str
    precision: str
    device: str
    def __init__(self, original: _Optional[_Union[_common_pb2.Accuracy, _Mapping]] = ..., compressed: _Optional[_Union[_common_pb2.Accuracy, _Mapping]] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("name", "id", "state", "spec", "request_id", "create_time", "start_time", "end_time", "progress", "failure", "message", "result", "cancel_requested", "last_sequence", "worker_node")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WORKER_NODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    state: JobState
    spec: JobSpec
    request_id: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    progress: Progress
    failure: Failure
    message: str
    result: JobResult
    cancel_requested: bool
    last_sequence: int
    worker_node: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., message: _Optional[str] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., cancel_requested: _Optional[bool] = ..., last_sequence: _Optional[int] = ..., worker_node: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("name", "after_sequence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_sequence: int
    def __init__(self, name: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job", "sequence", "time", "type", "state", "progress", "message", "terminal")
    JOB_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    job: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    type: EventType
    state: JobState
    progress: Progress
    message: str
    terminal: bool
    def __init__(self, job: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[_Union[EventType, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., message: _Optional[str] = ..., terminal: _Optional[bool] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("name", "deleted_artifacts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DELETED_ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    deleted_artifacts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., deleted_artifacts: _Optional[_Iterable[str]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Device(_message.Message):
    __slots__ = ("name", "address", "healthy", "error", "info")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    healthy: bool
    error: str
    info: _device_pb2.DeviceInfo
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., error: _Optional[str] = ..., info: _Optional[_Union[_device_pb2.DeviceInfo, _Mapping]] = ...) -> None: ...

class ClusterNode(_message.Message):
    __slots__ = ("node_id", "address", "alive", "cpus", "free_cpus", "gpus", "free_gpus", "resources")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    FREE_CPUS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    FREE_GPUS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    alive: bool
    cpus: float
    free_cpus: float
    gpus: float
    free_gpus: float
    resources: _containers.ScalarMap[str, float]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., alive: _Optional[bool] = ..., cpus: _Optional[float] = ..., free_cpus: _Optional[float] = ..., gpus: _Optional[float] = ..., free_gpus: _Optional[float] = ..., resources: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "executor", "nodes")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    executor: str
    nodes: _containers.RepeatedCompositeFieldContainer[ClusterNode]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., executor: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[ClusterNode, _Mapping]]] = ...) -> None: ...
