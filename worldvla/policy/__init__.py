"""The policy layer, below eval/ and serve/ (both stand on it, neither imports the other).

policy (WorldVLAPolicy: checkpoint -> action chunks, imagined frames), continuous (the RynnVLA-002 action
head's inference), interface (the Policy protocol, load_policy), official_checkpoints (the settings of the
released folders), decode (DecodeConfig), client (RemotePolicy, the websocket client) and wire (the
msgpack wire format client and server share).
"""
