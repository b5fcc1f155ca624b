"""Load (issue 14 item 8): a live buffer process driven by several fast synthetic actors and a learner for a
bounded time (benchmarks/buffer_soak.py; `python benchmarks/buffer_soak.py` prints the table). Backpressure
keeps the store inside the admission window, memory stays flat, every group sent is acknowledged, and the
ledger adds up. ASYNCOR_LONG_SOAK=1 runs it for 10 minutes."""

import os

import pytest

from benchmarks.buffer_soak import soak

pytestmark = pytest.mark.slow
SECONDS = 600.0 if os.environ.get("ASYNCOR_LONG_SOAK") else 8.0


@pytest.mark.parametrize("auth", ["off", "curve"])
def test_a_flooded_buffer_keeps_every_group_and_bounded_memory(tmp_path, auth):
    r = soak(SECONDS, senders=3, response_tokens=128, learner_step_s=0.01, auth=auth, run_dir=str(tmp_path))
    print(f"soak {auth}: {r['groups_per_s']:.0f} groups/s, {r['mb_per_s']:.1f} MB/s, peak RSS {r['peak_rss_mb']:.0f} MB")
    assert r["accepted"] > 0 and r["learner_steps"] > 0
    assert r["lost"] == 0 and r["sent"] == r["accepted"], r["not_accepted"]  # each group acknowledged "accepted"
    ledger = r["ledger"]
    assert ledger["accepted"] == r["accepted"] and ledger["unaccounted"] == 0, ledger
    assert ledger["trained"] == r["trained"]  # what the learner received is what the buffer counts as trained
    assert r["max_store"] <= r["max_groups"]  # admission holds the store inside (η + 1) x batch
    assert r["rss_second_half_mb"] <= r["rss_first_half_mb"] + 10, r  # no growth with the number of groups
    assert not r["rejected"]
