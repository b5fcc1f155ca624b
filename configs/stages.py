"""The multi-stage schedule (Skywork-OR1 §3.1, Tables 10-12): what changes at which training step.

Stage 0 is the base config (`actors.max_response_tokens`,
`learner.prompts_per_step`, `actors.group_size`); each entry of
`algo.stages` starts at its `start_step` and overrides the fields it sets.
The buffer hands each grant the sampling parameters of the current stage,
sizes its admission budget by the stage batch sizes, and filters the prompt
pool at each boundary; the learner asks for the current stage's batch size.
Nothing restarts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    index: int
    start_step: int
    max_response_tokens: int
    prompts_per_step: int
    group_size: int


def stages(config) -> list[Stage]:
    """Every stage, fully resolved, in order."""
    current = Stage(0, 0, config.actors.max_response_tokens, config.learner.prompts_per_step,
                    config.actors.group_size)
    out = [current]
    for i, spec in enumerate(config.algo.stages, start=1):
        current = Stage(
            i, spec.start_step,
            spec.max_response_tokens or current.max_response_tokens,
            spec.prompts_per_step or current.prompts_per_step,
            spec.group_size or current.group_size,
        )
        out.append(current)
    return out


def stage_at(config, step: int) -> Stage:
    """The stage that training step `step` (0-based, = the learner's version before it) belongs to."""
    return [s for s in stages(config) if s.start_step <= step][-1]  # stage 0 starts at step 0


def groups_through(config, steps: int) -> int:
    """Groups the learner consumes in its first `steps` training steps."""
    total, schedule = 0, stages(config)
    for i, stage in enumerate(schedule):
        end = schedule[i + 1].start_step if i + 1 < len(schedule) else steps
        total += max(0, min(end, steps) - stage.start_step) * stage.prompts_per_step
    return total


def max_over_stages(config, field: str) -> int:
    return max(getattr(s, field) for s in stages(config))
