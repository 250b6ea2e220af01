"""Policy server (websocket + msgpack) and its client: `python -m worldvla.serve policy=CKPT_DIR`,
`worldvla.serve.client.RemotePolicy("ws://127.0.0.1:8000")`. Wire format: wire.py."""
