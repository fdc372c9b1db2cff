"""The post-call webhook: every finished call POSTed as JSON, signed, delivered at least once.

`signing` signs and verifies bodies, `payload` builds them from the call log, `outbox` keeps
the deliveries in the call log's database, `sender` makes them, `cli` is `bridge webhooks`.
Nothing is imported here, so the call log's writer can use `outbox` without the HTTP client.
"""
