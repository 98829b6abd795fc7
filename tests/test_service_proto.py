"""The contract: committed stubs match the .proto, and the messages stay typed (no JSON strings)."""
from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from service.core import gen_proto
from service._proto.interprune.v1 import compression_pb2 as pb


def test_committed_stubs_match_a_fresh_generation():
    drift = gen_proto.differences()
    assert not drift, f"stubs out of date: {drift}; run python -m service.core.gen_proto"


def test_the_service_has_the_contracted_methods_and_streaming_kinds():
    service = pb.DESCRIPTOR.services_by_name["Compression"]
    kinds = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert kinds == {"UploadArtifact": (True, False), "GetArtifact": (False, False),
                     "DownloadArtifact": (False, True), "SubmitJob": (False, False), "GetJob": (False, False),
                     "ListJobs": (False, False), "WatchJob": (False, True), "CancelJob": (False, False),
                     "ListDevices": (False, False), "ListArtifacts": (False, False), "DeleteArtifact": (False, False),
                     "DeleteJob": (False, False)}


def test_no_json_strings_in_the_contract():
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        for field in message.fields:
            if field.type == FieldDescriptor.TYPE_STRING:
                assert not field.name.endswith("json"), f"{message.name}.{field.name} looks like a JSON string"


def test_latency_budget_round_trips_through_the_contract():
    from pruning.compress import CompressSpec, ModelSpec, PruneSpec
    from service.core.wire import spec_to_dict, spec_to_proto
    from pipeline.spec import JobSpec

    spec = JobSpec(CompressSpec(ModelSpec("demo/small_cnn"),
                                prune=PruneSpec("l1", latency_budget_ms=2.5, latency_batch=64)))
    back = JobSpec.from_dict(spec_to_dict(spec_to_proto(spec, "a" * 64, "d" * 64))[0])
    assert back.compress.prune.latency_budget_ms == 2.5
    assert back.compress.prune.latency_batch == 64 and back.compress.prune.latency_target == "local:cpu"


def test_an_unset_allocation_is_the_engines_default_sensitivity_and_uniform_stays_asked_for():
    # the default became "sensitivity" on 2026-12-02; a generic gRPC client that sets no allocation gets it too
    from pipeline.spec import JobSpec
    from service._proto.interprune.v1 import compression_pb2 as pb
    from service.core.wire import spec_to_dict

    def allocation(value: int) -> str:
        message = pb.JobSpec(model=pb.ModelSpec(arch="demo/small_cnn"),
                             prune=pb.PruneSpec(criterion="l1", allocation=value))
        return JobSpec.from_dict(spec_to_dict(message)[0]).compress.prune.allocation

    assert allocation(pb.ALLOCATION_UNSPECIFIED) == "sensitivity"
    assert allocation(pb.ALLOCATION_UNIFORM) == "uniform"


def test_the_agent_contract_does_not_import_the_compression_contract():
    from service._proto.interprune.v1 import device_agent_pb2

    imported = {f.name for f in device_agent_pb2.DESCRIPTOR.dependencies}
    assert "interprune/v1/compression.proto" not in imported
    assert "interprune/v1/common.proto" in imported


def test_resources_are_named_and_requests_take_names():
    for message in ("Job", "Artifact"):
        assert "name" in pb.DESCRIPTOR.message_types_by_name[message].fields_by_name
    for request in ("GetJobRequest", "WatchJobRequest", "CancelJobRequest", "GetArtifactRequest",
                    "DownloadArtifactRequest"):
        fields = pb.DESCRIPTOR.message_types_by_name[request].fields_by_name
        assert "name" in fields and not any(f.endswith("_id") for f in fields), request
