"""One live call, split as websockets splits a protocol from its connection.

- `session.py`: `CallSession`, every decision of a call, Sans-I/O (events in, effects out):
  barge-in, the response queue, the spoken-reply guarantee, the goodbye, turns, the end.
- `bargein.py`: what the caller has actually heard, and the barge-in plan made from it.
- `responses.py`, `speech_guarantee.py`: the response queue; text-only replies recovered.
- `effects.py`: the effects a session returns.
- `shell.py`: `Call`, the per-call tasks and sockets, carrying effects out.
- `writers.py`: one ordered writer per socket.
"""
