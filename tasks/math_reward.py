"""Rule-based math reward (Skywork-OR1 §7.1, `math_verify_reward_function` in the released code).

1. Take the text after the last `</think>` (the whole text if there is none).
2. Parse it with the `math-verify` package under a timeout; nothing extracted -> 0.
3. 1 if the extracted answer string equals the gold answer (also when math-verify
   could not read it as mathematics), else 1 if
   `verify(parse("\\boxed{gold}"), parsed)` holds (wrapping the gold answer in
   \\boxed is what makes plain gold strings parse reliably), else 0. A gold
   written with a decimal comma (`0,5`; not `1,000`, a thousands separator) is
   also tried as `0.5`: boxed as is, math-verify reads it as the set {0, 5}.

Before parsing, an upright Euler's number (`\\mathrm{e}`, `\\mathrm e`, `{\\rm e}`, `\\textrm{e}`,
`\\operatorname{e}`) is written as a plain `e`, in the answer and in the gold alike. math-verify 0.9.0 turns
`\\mathrm{e}` into `\\text{e}`, which its unit stripping then cuts off together with the closing brace
(`1 - \\frac{1}{\\mathrm{e}}` became the unparsable `1 - \\frac{1}{`), or reads as a symbol `e` that never
equals the constant `e^{2}`.

math-verify handles the equivalences (fractions, \\frac / \\dfrac, decimals,
intervals, sets, units stripped). Its timeouts use SIGALRM, which only works
in a process's main thread: run this in the verifier pool's worker processes
(tasks/verifier_pool.py), which also enforce a hard deadline from outside.
Any error in parsing or verification is a 0, never an exception.
"""

from __future__ import annotations

import re

THINK_END = "</think>"
DECIMAL_COMMA = re.compile(r"^-?\d+,(\d{1,2}|\d{4,})$")
UPRIGHT_E = re.compile(r"\\(?:mathrm|textrm|operatorname)\s*\{\s*e\s*\}|\\mathrm\s+e(?![A-Za-z])|\{\s*\\rm\s+e\s*\}")


def solution_text(response: str) -> str:
    """What the model answered after thinking: the text after the last </think>, else all of it."""
    cut = response.rfind(THINK_END)
    return response[cut + len(THINK_END):] if cut >= 0 else response


def plain_euler_e(text: str) -> str:
    """`text` with every upright Euler's number (`\\mathrm{e}` and its spellings) written as a plain `e`;
    a space keeps it apart from a neighbouring letter (`x\\mathrm{e}` -> `x e`, `\\cdot\\mathrm{e}` -> `\\cdot e`)."""
    def plain(match: re.Match) -> str:
        before = text[match.start() - 1] if match.start() > 0 else ""
        after = text[match.end()] if match.end() < len(text) else ""
        return (" " if before.isalpha() else "") + "e" + (" " if after.isalpha() else "")
    return UPRIGHT_E.sub(plain, text)


def math_reward(response: str, gold: str, timeout_s: int = 5) -> float:
    """1.0 if the response's final answer equals `gold` mathematically, else 0.0."""
    from math_verify import parse, verify

    try:
        gold = plain_euler_e(gold)
        parsed = parse(plain_euler_e(solution_text(response)), parsing_timeout=timeout_s)
        if not parsed:
            return 0.0
        if str(parsed[-1]).strip() == gold.strip():  # the extracted string: [expression, string] or [string]
            return 1.0
        if len(parsed) < 2:
            return 0.0  # math-verify found no expression in it
        golds = [gold] + ([gold.strip().replace(",", ".")] if DECIMAL_COMMA.match(gold.strip()) else [])
        for g in golds:
            gold_parsed = parse("\\boxed{" + g + "}", parsing_timeout=timeout_s)
            if gold_parsed and verify(gold_parsed, parsed, timeout_seconds=timeout_s):
                return 1.0
        return 0.0
    except Exception:  # noqa: BLE001 - a malformed answer scores 0; the actor must never crash on it
        return 0.0
