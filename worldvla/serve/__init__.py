"""Policy server (websocket + msgpack): `python -m worldvla.serve policy=CKPT_DIR`. Its client
(`worldvla.policy.client.RemotePolicy("ws://127.0.0.1:8000")`) and the wire format (worldvla.policy.wire)
live one layer down, in worldvla.policy, which eval uses too."""
