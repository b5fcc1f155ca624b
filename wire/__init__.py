"""The wire (DESIGN §10 `wire/`): what every process boundary carries and how, imported by buffer/, actors/,
learner/, sync/, telemetry/ and launcher/, importing none of them.

  protocol.py   the envelope {type, schema, body}, packed arrays, trajectory groups and their parser
  messages.py   every other message body as a typed msgspec Struct, one `parse` for all
  transport.py  ZeroMQ request/reply client and server with deadlines and bounded queues
  curve.py      CURVE keys and secured sockets (net.auth)
"""
