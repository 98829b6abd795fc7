from service._proto.interprune.v1 import compression_pb2 as _compression_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentTokenRequest(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: str
    def __init__(self, agent: _Optional[str] = ...) -> None: ...

class AgentToken(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class AttachWorkerRequest(_message.Message):
    __slots__ = ("pid", "node")
    PID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    node: str
    def __init__(self, pid: _Optional[int] = ..., node: _Optional[str] = ...) -> None: ...

class GetWorkerJobRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerJob(_message.Message):
    __slots__ = ("id", "state", "spec_json", "cancel_requested", "attempt")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: _compression_pb2.JobState
    spec_json: str
    cancel_requested: bool
    attempt: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[_compression_pb2.JobState, str]] = ..., spec_json: _Optional[str] = ..., cancel_requested: _Optional[bool] = ..., attempt: _Optional[int] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: _compression_pb2.Progress
    def __init__(self, progress: _Optional[_Union[_compression_pb2.Progress, _Mapping]] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class FinishJobRequest(_message.Message):
    __slots__ = ("state", "message", "failure", "result_json")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    state: _compression_pb2.JobState
    message: str
    failure: _compression_pb2.Failure
    result_json: str
    def __init__(self, state: _Optional[_Union[_compression_pb2.JobState, str]] = ..., message: _Optional[str] = ..., failure: _Optional[_Union[_compression_pb2.Failure, _Mapping]] = ..., result_json: _Optional[str] = ...) -> None: ...

class JobArtifactRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
