"""A trajectory group: one prompt's `group_size` responses, as the actor sends it and the learner trains on it.

Each response carries its token ids, the behaviour log-prob of every token (float32), the oldest policy
version that produced any of its tokens (`min_version`) and, when the weights changed while it was being
generated, the version of every token (`versions`); its finish reason (stop | length | abort) and reward. A
multi-turn episode (DESIGN §11) also carries `loss_mask`: 1 for a token the policy sampled, 0 for a token the
environment appended (an observation). Environment tokens carry no behaviour: log-prob 0 and, in `versions`,
-1; `min_version` is the oldest policy token's. The
group adds the prompt's id and token ids, the sending actor, its sequence number ((actor_id, seq) dedupes
redelivery), the generation time and the verifier's details.

`parse_group` checks an untrusted body field by field (per-token arrays and their lengths, finiteness,
log-probabilities <= 0 up to 1e-3 of rounding, ids in [0, MAX_ID), versions agreeing with min_version, a loss mask
of 0 / 1 whose environment tokens carry log-prob 0 and version -1, at most
`max_group_size` responses, details a small map of scalars) and raises `ProtocolError` otherwise, and nothing
else, whatever msgpack value sits in any field (wire/envelope.py). `parse_batch` checks a whole batch the
buffer sent the learner: its groups, one staleness each, none staler than the run allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from asyncor.wire.arrays import pack_array, unpack_array
from asyncor.wire.envelope import Message, ProtocolError, preview, require
from asyncor.wire.messages import BatchReply, parse

FINISH_REASONS = frozenset({"stop", "length", "abort"})
MAX_ID = 1 << 62  # prompt ids, actor ids and sequence numbers stay below it (numbers derived from them still fit
#                   msgpack's 64 bits: a restarted actor's Welcome.seq_start is the highest seq + 65537)


@dataclass
class Response:
    token_ids: np.ndarray  # (T,) int32
    logprobs: np.ndarray  # (T,) float32 behaviour log-prob of each sampled token
    min_version: int  # oldest policy version that produced any of its tokens
    finish_reason: str  # stop | length | abort
    reward: float
    versions: np.ndarray | None = None  # (T,) int32 per-token versions (in-flight updates only); -1: environment
    loss_mask: np.ndarray | None = None  # (T,) uint8: 1 policy token (trained), 0 environment token (context)

    @property
    def policy_tokens(self) -> int:
        return len(self.token_ids) if self.loss_mask is None else int(self.loss_mask.sum())

    def to_wire(self) -> dict:
        out = {
            "token_ids": pack_array(self.token_ids.astype(np.int32, copy=False)),
            "logprobs": pack_array(self.logprobs.astype(np.float32, copy=False)),
            "min_version": int(self.min_version),
            "finish_reason": self.finish_reason,
            "reward": float(self.reward),
        }
        if self.versions is not None:
            out["versions"] = pack_array(self.versions.astype(np.int32, copy=False))
        if self.loss_mask is not None:
            out["loss_mask"] = pack_array(self.loss_mask.astype(np.uint8, copy=False))
        return out


@dataclass
class TrajectoryGroup:
    prompt_id: int
    prompt_ids: np.ndarray  # (P,) int32
    responses: list[Response]
    actor_id: int
    seq: int  # per-actor sequence number; (actor_id, seq) dedupes redelivery
    gen_time_s: float
    details: dict = field(default_factory=dict)  # verifier details, free-form scalars

    @property
    def min_version(self) -> int:
        return min(r.min_version for r in self.responses)

    @property
    def rewards(self) -> np.ndarray:
        return np.array([r.reward for r in self.responses], dtype=np.float32)

    @property
    def num_tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.responses)

    def to_wire(self) -> dict:
        return {
            "prompt_id": int(self.prompt_id),
            "prompt_ids": pack_array(self.prompt_ids.astype(np.int32, copy=False)),
            "responses": [r.to_wire() for r in self.responses],
            "actor_id": int(self.actor_id),
            "seq": int(self.seq),
            "gen_time_s": float(self.gen_time_s),
            "details": self.details,
        }


def _parse_response(obj: Any, i: int) -> Response:
    if not isinstance(obj, dict):
        raise ProtocolError("bad_field", f"responses[{i}] is not a map")
    token_ids = unpack_array(require(obj, "token_ids", dict), f"responses[{i}].token_ids", "<i4")
    logprobs = unpack_array(require(obj, "logprobs", dict), f"responses[{i}].logprobs", "<f4")
    if len(token_ids) != len(logprobs):
        raise ProtocolError("length_mismatch", f"responses[{i}]: {len(token_ids)} tokens, {len(logprobs)} log-probs")
    versions = None
    if "versions" in obj:
        versions = unpack_array(obj["versions"], f"responses[{i}].versions", "<i4")
        if len(versions) != len(token_ids):
            raise ProtocolError("length_mismatch", f"responses[{i}]: {len(token_ids)} tokens, {len(versions)} versions")
    if not np.isfinite(logprobs).all():
        raise ProtocolError("non_finite", f"responses[{i}].logprobs")
    if (logprobs > 1e-3).any():
        raise ProtocolError("bad_value", f"responses[{i}].logprobs has positive log-probabilities")
    if (token_ids < 0).any():
        raise ProtocolError("bad_value", f"responses[{i}].token_ids has negative ids")
    mask = None
    if "loss_mask" in obj:
        mask = unpack_array(obj["loss_mask"], f"responses[{i}].loss_mask", "|u1")
        if len(mask) != len(token_ids):
            raise ProtocolError("length_mismatch", f"responses[{i}]: {len(token_ids)} tokens, {len(mask)} mask bits")
        if (mask > 1).any():
            raise ProtocolError("bad_value", f"responses[{i}].loss_mask holds values other than 0 and 1")
        env = mask == 0
        if (logprobs[env] != 0).any() or (versions is not None and (versions[env] != -1).any()):
            raise ProtocolError("bad_value", f"responses[{i}]: environment tokens must carry log-prob 0, version -1")
    policy_versions = versions if versions is None or mask is None else versions[mask == 1]
    min_version = require(obj, "min_version", int)
    if min_version < 0 or (policy_versions is not None and len(policy_versions)
                           and int(policy_versions.min()) != min_version):
        raise ProtocolError("bad_value",
                            f"responses[{i}].min_version {min_version} is negative or disagrees with versions")
    finish = require(obj, "finish_reason", str)
    if finish not in FINISH_REASONS:
        raise ProtocolError("bad_value",
                            f"responses[{i}].finish_reason {preview(finish)} not in {sorted(FINISH_REASONS)}")
    reward = float(require(obj, "reward", (int, float)))
    if not math.isfinite(reward):
        raise ProtocolError("non_finite", f"responses[{i}].reward")
    return Response(token_ids, logprobs, min_version, finish, reward, versions, mask)


def parse_group(body: dict, max_group_size: int = 1 << 16) -> TrajectoryGroup:
    responses = require(body, "responses", list)
    if not 1 <= len(responses) <= max_group_size:
        raise ProtocolError("bad_value", f"group has {len(responses)} responses (1..{max_group_size} accepted)")
    gen_time = float(require(body, "gen_time_s", (int, float)))
    if not math.isfinite(gen_time) or gen_time < 0:
        raise ProtocolError("non_finite", "gen_time_s")
    details = body.get("details", {})
    if not isinstance(details, dict) or len(details) > 64 or not all(
            isinstance(k, str) and len(k) <= 64 and (v is None or isinstance(v, (bool, int, float, str)))
            and not (isinstance(v, str) and len(v) > 1024) for k, v in details.items()):
        raise ProtocolError("bad_field", "'details' must be a map of at most 64 names to scalars")
    prompt_ids = unpack_array(require(body, "prompt_ids", dict), "prompt_ids", "<i4")
    group = TrajectoryGroup(
        prompt_id=require(body, "prompt_id", int),
        prompt_ids=prompt_ids,
        responses=[_parse_response(r, i) for i, r in enumerate(responses)],
        actor_id=require(body, "actor_id", int),
        seq=require(body, "seq", int),
        gen_time_s=gen_time,
        details=details,
    )
    if not all(0 <= x < MAX_ID for x in (group.prompt_id, group.actor_id, group.seq)):
        raise ProtocolError("bad_value", "prompt_id, actor_id and seq must be in [0, 2**62)")
    return group


def parse_batch(msg: Message, max_staleness: int, max_group_size: int = 1 << 16
                ) -> tuple[list[TrajectoryGroup], list[int], dict]:
    """A batch from the buffer (wire/messages.py BatchReply), checked whole: at least one group, each a valid
    trajectory group (`parse_group`), one staleness per group, none above `max_staleness` (buffer.max_staleness,
    since the buffer drops staler groups before a batch; with buffer.stale_policy = "train" the learner passes its
    own version instead). Returns (groups, staleness, the groups report as a map, {}
    when the buffer sent none); ProtocolError otherwise."""
    batch = parse(msg, BatchReply)
    if not batch.groups:
        raise ProtocolError("bad_value", "a batch without groups")
    if len(batch.staleness) != len(batch.groups):
        raise ProtocolError("length_mismatch", f"{len(batch.groups)} groups, {len(batch.staleness)} staleness values")
    if max(batch.staleness) > max_staleness:
        raise ProtocolError("bad_value", f"staleness {max(batch.staleness)} > buffer.max_staleness {max_staleness}")
    groups = [parse_group(g, max_group_size) for g in batch.groups]
    report = msgspec.structs.asdict(batch.groups_report) if batch.groups_report is not None else {}
    return groups, batch.staleness, report
