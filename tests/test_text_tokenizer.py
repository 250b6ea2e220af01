import json
import re

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


def _retarget(tiny_assets, tmp_path, name, new_id):
    """A copy of the fixture tokenizer where `name` sits at `new_id` (model.vocab and added_tokens)."""
    data = json.loads(tiny_assets.tokenizer_json.read_text())
    data["model"]["vocab"][name] = new_id
    for tok in data["added_tokens"]:
        if tok["content"] == name:
            tok["id"] = new_id
    path = tmp_path / "off" / "text_tokenizer.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name", sorted(V.OFFICIAL_NAMES))
def test_every_special_id_is_checked_by_name_in_the_loaded_file(tiny_assets, tmp_path, name):
    """BOS, 8710, boi/eoi, the row break, the size tokens and the action/state block ids: a file where
    one of them is off by one is refused at load, naming the file and the token."""
    assert V.OFFICIAL_NAMES["<s>"] == V.BOS_ID == 0 and V.OFFICIAL_NAMES["<reserved08808>"] == 8812
    bad = _retarget(tiny_assets, tmp_path, name, V.OFFICIAL_NAMES[name] + 1)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".*" + re.escape(repr(name))):
        TextTokenizer(bad)


def test_size_token_of_the_resolution_is_checked(tiny_assets, tmp_path):
    from worldvla.tokenizers.image import ImageTokenizer

    vocab = Vocab.from_tokenizer_file(_retarget(tiny_assets, tmp_path, "<reserved08812>", 9999))  # 384 px: 12 grids
    ImageTokenizer.from_files(tiny_assets.vqgan_yaml, tiny_assets.vqgan_ckpt, vocab, 256)
    with pytest.raises(ValueError, match=r"off/text_tokenizer.json: size token '<reserved08812>'.*384 px"):
        ImageTokenizer.from_files(tiny_assets.vqgan_yaml, tiny_assets.vqgan_ckpt, vocab, 384)
