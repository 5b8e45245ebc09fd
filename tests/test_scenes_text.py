"""Word tokenizer and the synthetic scenes as captioning / VQA next-token data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlkit
from vlkit.data.datasets.scenes_text import SceneCaptions, SceneQuestions, scene_corpus
from vlkit.data.datasets.shapes import ShapesDataset
from vlkit.data.datasets.vqa_text import IGNORE_INDEX, collate_vqa_text
from vlkit.data.tokenizers.word import SPECIAL_TOKENS, WordTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    return WordTokenizer.train(scene_corpus(50))


def test_word_tokenizer_round_trip_and_specials(tokenizer: WordTokenizer, tmp_path: Path) -> None:
    text = "a large red circle, a small blue square and a small green star"
    ids = tokenizer.encode(text)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    # Decoding stops at eos and drops other specials; case is folded, punctuation split off.
    assert tokenizer.decode([tokenizer.sot_token_id, *ids, tokenizer.eot_token_id, 9]) == text
    assert tokenizer.encode("How many?") == tokenizer.encode("how many ?")
    assert tokenizer.encode("zebra") == [tokenizer.unk_token_id]
    assert [tokenizer.backend.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    tokenizer.save(tmp_path)
    loaded = WordTokenizer.from_file(tmp_path / "tokenizer.json")
    assert loaded.encode(text) == ids and loaded.vocab_size == tokenizer.vocab_size


def test_word_tokenizer_rejects_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        WordTokenizer.from_file(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        WordTokenizer.from_file(tmp_path)
    vlkit.get_tokenizer("clip").backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="<pad> must have id 0"):
        WordTokenizer.from_file(tmp_path)


def test_scene_captions_items(tokenizer: WordTokenizer) -> None:
    data = SceneCaptions(20, "train", vlkit.get_transform("small-rn-64"), tokenizer, 32)
    item = data[3]  # plain index: the canonical caption
    canonical = data.references(3)[0]
    n = int(item["attention_mask"].sum())
    ids = item["input_ids"][:n].tolist()
    assert ids == [tokenizer.sot_token_id, *tokenizer.encode(canonical), tokenizer.eot_token_id]
    assert item["labels"][0] == IGNORE_INDEX and item["labels"][1:n].tolist() == ids[1:]
    assert (item["labels"][n:] == IGNORE_INDEX).all() and item["image"].shape == (3, 64, 64)
    # A keyed item draws its phrasing from the key: deterministic, and always a true caption.
    texts = {data.caption((3, seed)) for seed in range(40)}
    assert data.caption((3, 5)) == data.caption((3, 5)) and len(texts) > 1
    scene_objects = data.scenes.scene(3)[1]
    for text in texts:
        for obj in scene_objects:
            assert obj.color in canonical and obj.shape in canonical
        assert any(obj.shape in text for obj in scene_objects)
    assert data.references(3)[0] == data.answer(3)
    assert torch.equal(data.prompt_ids(0), torch.tensor([tokenizer.sot_token_id]))


def test_scene_questions_flatten_every_question(tokenizer: WordTokenizer) -> None:
    transform = vlkit.get_transform("small-rn-64")
    data = SceneQuestions(6, "test", transform, tokenizer, 24)
    scenes = ShapesDataset(6, split="test")
    expected = [qa for i in range(6) for qa in scenes.questions(i)]
    assert len(data) == len(expected)
    assert [data.question(i) for i in range(len(data))] == [qa["question"] for qa in expected]
    assert [data.answer(i) for i in range(len(data))] == [qa["answer"] for qa in expected]
    spatial = SceneQuestions(6, "test", transform, tokenizer, 24, kinds=("spatial",))
    assert 0 < len(spatial) < len(data)
    assert all(" left of " in q or " above " in q for q, _, _ in spatial.samples)
    batch = collate_vqa_text([data[i] for i in range(4)])
    answer = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert answer == [*tokenizer.encode(data.answer(0)), tokenizer.eot_token_id]
    # The image of a question is its scene's rendering.
    image = transform(scenes.scene(int(data.samples[0][2]))[0])
    assert torch.equal(batch["images"][0], image)
