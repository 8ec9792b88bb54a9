"""Software implementation of every offload task: pure functions over batches, no I/O."""

from netoffload.engine.checksum import (
    FillJob,
    VerifyResult,
    fill_batch,
    fill_ipv4_header,
    fill_partial,
    ipv4_header_checksum,
    verify_batch,
)
from netoffload.engine.dissect import DissectError, Dissection, dissect
from netoffload.engine.gro import (
    GRO_MAX_SIZE,
    Assembled,
    assemble,
    coalesce,
    verify_and_assemble,
)
from netoffload.engine.gso import (
    GsoError,
    SegmentBatch,
    plan_batch,
    segment,
    segment_batch,
    segment_request,
)
from netoffload.engine.pipeline import RxOutcome, TxOutcome, receive, transmit
from netoffload.engine.validate import VnetHdrRejected, VnetPlan, check_vnet_hdr, plan_vnet_hdr

__all__ = [
    "GRO_MAX_SIZE",
    "Assembled",
    "DissectError",
    "Dissection",
    "FillJob",
    "GsoError",
    "RxOutcome",
    "SegmentBatch",
    "TxOutcome",
    "VerifyResult",
    "VnetHdrRejected",
    "VnetPlan",
    "assemble",
    "check_vnet_hdr",
    "coalesce",
    "dissect",
    "fill_batch",
    "fill_ipv4_header",
    "fill_partial",
    "ipv4_header_checksum",
    "plan_batch",
    "plan_vnet_hdr",
    "receive",
    "segment",
    "segment_batch",
    "segment_request",
    "transmit",
    "verify_and_assemble",
    "verify_batch",
]
