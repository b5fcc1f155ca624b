"""Weights from the learner to every actor (DESIGN §5, §10 `sync/`): shared by the learner (publisher) and the
actors (receivers), neither importing the other.

  buckets.py      per-dtype buckets, their wire form, flatten / unflatten
  group.py        the learner's TCP store and one stateless process group per membership epoch
  broadcaster.py  the learner's side: membership (probe, join, drop, rejoin), announcements, the collective
  receiver.py     the actor's receiver thread: hello, answers, joins, stages the newest version
"""
