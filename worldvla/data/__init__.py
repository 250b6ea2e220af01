"""Data pipeline (data/README.md): raw LIBERO demos -> regenerated replays -> per-frame files ->
conversations -> token shards -> training datasets.

Modules (one job each): raw_demos (raw demo HDF5 layout, reader/writer, rollout recorder),
regenerate (no-op filter, replay, success filter), export (official per-frame folders),
conversations (samples and splits), sequence (one record -> tokens, labels, spans),
tokenization (tokenizer bundle + image cache), frame_cache (VQ codes per image file),
shards (token shard format), pretokenize (parallel, resumable job), concat (concatenation index),
official_records (official record.json + safe pickle reader), datasets (PretokenizedDataset,
OnTheFlyDataset), collate (padding), cli (entry points).
"""
