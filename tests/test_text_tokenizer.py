import json

import numpy as np
import pytest

from worldvla import vocab as V
from worldvla.tokenizers.text import TextTokenizer, resolve_tokenizer_file
from worldvla.vocab import Vocab


def test_loads_from_dir_and_file(tiny_assets):
    a = TextTokenizer.from_pretrained(tiny_assets.root)  # finds tokenizer/text_tokenizer.json
    b = TextTokenizer(tiny_assets.tokenizer_json)
    text = "What action should the robot take to open the top drawer of the cabinet?"
    assert a.encode(text) == b.encode(text) and len(a.encode(text)) > 3
    assert a.decode(a.encode(text)) == text


def test_official_ids_by_name(text_tokenizer):
    for name, tid in V.OFFICIAL_NAMES.items():
        assert text_tokenizer.token_to_id(name) == tid
    assert text_tokenizer.token_to_id("<reserved08808>") == V.size_token_id(8) == 8812
    assert text_tokenizer.token_to_id("<reserved08816>") == V.size_token_id(16) == 8820
    assert text_tokenizer.encode("<reserved08706>") == [V.END_OF_TURN_ID]


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_tokenizer.json"):
        resolve_tokenizer_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        TextTokenizer(tmp_path / "text_tokenizer.json")
    with pytest.raises(FileNotFoundError, match="hub repo"):
        resolve_tokenizer_file("someone/not-a-real-repo")  # offline in tests: fails with a clear message


def test_wrong_vocab_rejected(tiny_assets, tmp_path):
    data = json.loads(tiny_assets.tokenizer_json.read_text())
    data["model"]["vocab"]["<reserved10000>"] = 10003
    for tok in data["added_tokens"]:
        if tok["content"] == "<reserved10000>":
            tok["id"] = 10003
    bad = tmp_path / "text_tokenizer.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"<reserved10000>.*10004"):
        Vocab.from_tokenizer_file(bad)


def test_image_code_mapping_from_names(text_tokenizer):
    vocab = text_tokenizer.vocab
    assert V.image_code_from_name("IMGIMGBCDZ") == 123
    assert V.image_name_from_code(123) == "IMGIMGBCDZ"
    # the fixture permutes ids, so the mapping must come from the names, not an offset
    assert sorted(vocab.code_to_id.tolist()) == list(range(4, 4 + 8192))
    assert (vocab.code_to_id != 4 + np.arange(8192)).any()
    for code in (0, 1, 9, 10, 8191):
        tid = int(vocab.code_to_id[code])
        assert vocab.id_to_code[tid] == code
        assert text_tokenizer.token_to_id(V.image_name_from_code(code)) == tid
