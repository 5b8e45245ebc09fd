"""faiss search indexes: exact kinds equal brute force, HNSW recall, save/load, image search."""

import argparse
import json

import pytest
import torch
from PIL import Image
from skimage import data as skdata

import vlkit
from vlkit.cli.index import index_command, search_command
from vlkit.cli.main import build_parser, main
from vlkit.data.images import load_image
from vlkit.evaluation import build_zero_shot_classifier, load_templates
from vlkit.inference import EmbeddingIndex, ImageSearcher, SearchHit, build_image_index
from vlkit.inference.image_search import encode_image_files, list_image_files

faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)


def unit_vectors(count: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(count, dim, generator=generator), dim=-1)


def brute_force(data: torch.Tensor, queries: torch.Tensor, k: int):
    return (queries @ data.T).topk(k, dim=1)  # scores, positions: (Q, k)


def positions(hits: list[list[SearchHit]]) -> list[list[int]]:
    return [[hit.position for hit in row] for row in hits]


def scores(hits: list[list[SearchHit]]) -> torch.Tensor:
    return torch.tensor([[hit.score for hit in row] for row in hits])


@pytest.fixture(scope="module")
def vectors():
    return unit_vectors(2000, 48, seed=1), unit_vectors(40, 48, seed=2)


def test_flat_search_equals_brute_force(vectors):
    data, queries = vectors
    names = [f"row{i}" for i in range(len(data))]
    index = EmbeddingIndex.build(data, names)
    hits = index.search(queries, k=10)
    expected_scores, expected_positions = brute_force(data, queries, 10)
    assert positions(hits) == expected_positions.tolist()
    torch.testing.assert_close(scores(hits), expected_scores, atol=1e-6, rtol=0)
    assert hits[3][0].name == names[expected_positions[3, 0]]
    # Unnormalised input is normalised (cosine search); a (D,) query gives one list.
    scaled = EmbeddingIndex.build(data.numpy() * 7.0, names)
    single = scaled.search(queries[5] * 0.1, k=3)
    assert len(single) == 1
    assert [h.position for h in single[0]] == expected_positions[5, :3].tolist()
    # k is clipped to the index size.
    assert len(EmbeddingIndex.build(data[:4], names[:4]).search(queries, k=10)[0]) == 4


def test_ivf_with_all_cells_probed_is_exact(vectors):
    data, queries = vectors
    index = EmbeddingIndex.build(data, [str(i) for i in range(len(data))], kind="ivf", nlist=16)
    assert index.nlist == 16
    hits = index.search(queries, k=10, nprobe=16)
    expected_scores, expected_positions = brute_force(data, queries, 10)
    assert positions(hits) == expected_positions.tolist()
    torch.testing.assert_close(scores(hits), expected_scores, atol=1e-5, rtol=0)
    # One cell per query is approximate: on random data it misses some true neighbours.
    coarse = positions(index.search(queries, k=10, nprobe=1))
    assert coarse != expected_positions.tolist()


def test_hnsw_recall_at_10():
    data = unit_vectors(4000, 48, seed=3)
    queries = unit_vectors(100, 48, seed=4)
    index = EmbeddingIndex.build(data, [str(i) for i in range(len(data))], kind="hnsw")
    hits = index.search(queries, k=10)
    _, expected = brute_force(data, queries, 10)
    found = [
        len(set(row) & set(exact))
        for row, exact in zip(positions(hits), expected.tolist(), strict=True)
    ]
    recall = sum(found) / (10 * len(queries))
    assert recall >= 0.95, recall
    assert all(len(row) == 10 for row in hits)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip_and_add(vectors, kind, tmp_path):
    data, queries = vectors
    names = [f"img/{i}.png" for i in range(len(data))]
    index = EmbeddingIndex.build(data[:1500], names[:1500], kind=kind, metadata={"note": "x"})
    index.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["index.faiss", "index.json"]
    loaded = EmbeddingIndex.load(tmp_path / "ix")
    assert (loaded.kind, loaded.dim, loaded.names) == (kind, 48, names[:1500])
    assert loaded.metadata == {"note": "x"}
    assert loaded.search(queries, k=7, nprobe=4) == index.search(queries, k=7, nprobe=4)

    loaded.add(data[1500:], names[1500:])
    assert len(loaded) == len(loaded.names) == 2000
    hits = loaded.search(data[1700:1710], k=1, nprobe=loaded.nlist)
    assert [row[0].position for row in hits] == list(range(1700, 1710))
    assert hits[0][0].name == "img/1700.png"
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_errors_are_one_line_and_name_the_problem(vectors, tmp_path):
    data, queries = vectors
    index = EmbeddingIndex.build(data[:50], [str(i) for i in range(50)])
    with pytest.raises(FileNotFoundError, match="no such index directory"):
        EmbeddingIndex.load(tmp_path / "missing")
    index.save(tmp_path / "ix")
    meta = tmp_path / "ix" / "index.json"
    info = json.loads(meta.read_text())
    info["names"] = info["names"][:-1]
    meta.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="49 names for 50 vectors") as excinfo:
        EmbeddingIndex.load(tmp_path / "ix")
    assert "\n" not in str(excinfo.value)
    info["names"].append("49")
    info["kind"] = "hnsw"
    meta.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="says kind 'hnsw' but index.faiss holds an IndexFlatIP"):
        EmbeddingIndex.load(tmp_path / "ix")
    info["kind"] = "flat"
    info["dim"] = 64
    meta.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="dimension 48, index.json says 64"):
        EmbeddingIndex.load(tmp_path / "ix")
    (tmp_path / "ix" / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="no index.faiss"):
        EmbeddingIndex.load(tmp_path / "ix")
    with pytest.raises(ValueError, match="queries have dimension 32, the index has 48"):
        index.search(torch.randn(3, 32))
    with pytest.raises(ValueError, match="dimension 32, the index has 48"):
        index.add(torch.randn(2, 32), ["a", "b"])
    with pytest.raises(ValueError, match="3 names for 50 embeddings"):
        EmbeddingIndex.build(data[:50], ["a", "b", "c"])
    with pytest.raises(ValueError, match="index kind 'lsh'"):
        EmbeddingIndex.build(data[:50], [str(i) for i in range(50)], kind="lsh")
    with pytest.raises(ValueError, match="nlist=100"):
        EmbeddingIndex.build(data[:50], [str(i) for i in range(50)], kind="ivf", nlist=100)


def test_save_detects_files_from_different_saves(vectors, tmp_path):
    data, _ = vectors
    EmbeddingIndex.build(data[:50], [str(i) for i in range(50)]).save(tmp_path / "a")
    EmbeddingIndex.build(data[50:100], [str(i) for i in range(50)]).save(tmp_path / "b")
    (tmp_path / "b" / "index.faiss").replace(tmp_path / "a" / "index.faiss")
    with pytest.raises(ValueError, match="does not match index.json"):
        EmbeddingIndex.load(tmp_path / "a")


# --- image search with a tiny random CLIP ------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    (directory / "more").mkdir()
    Image.fromarray(skdata.astronaut()).save(directory / "astronaut.png")
    Image.fromarray(skdata.coffee()).save(directory / "coffee.jpg")
    Image.fromarray(skdata.chelsea()).save(directory / "more" / "chelsea.jpeg")
    Image.fromarray(skdata.rocket()).save(directory / "more" / "rocket.PNG")
    Image.fromarray(skdata.camera()).save(directory / "camera.bmp")  # grayscale
    (directory / "notes.txt").write_text("not an image")
    return directory


@pytest.fixture(scope="module")
def image_index(checkpoint, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "photos.index"
    index = build_image_index(str(checkpoint), str(photos), str(out), batch_size=2)
    return index, out


def test_list_image_files_is_recursive_and_sorted(photos, tmp_path):
    files = list_image_files(photos)
    names = [p.removeprefix(str(photos) + "/") for p in files]
    assert names == ["astronaut.png", "camera.bmp", "coffee.jpg", "more/chelsea.jpeg",
                     "more/rocket.PNG"]  # fmt: skip
    with pytest.raises(ValueError, match="no image files"):
        list_image_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        list_image_files(tmp_path / "missing")


def test_build_image_index_matches_the_model(checkpoint, photos, image_index):
    index, out = image_index
    assert index.names == list_image_files(photos.resolve())
    assert index.metadata == {"model": str(checkpoint.resolve()),
                              "images_dir": str(photos.resolve()), "modality": "image",
                              "skipped": []}  # fmt: skip
    assert EmbeddingIndex.load(out).names == index.names
    model = vlkit.from_pretrained(checkpoint)
    transform = vlkit.get_transform(checkpoint)
    with torch.no_grad():
        expected = torch.cat([
            model.encode_image(transform(load_image(p)).unsqueeze(0), normalize=True)
            for p in index.names
        ])  # fmt: skip
    embedded = encode_image_files(model, transform, index.names, batch_size=3)
    torch.testing.assert_close(embedded, expected, atol=1e-5, rtol=0)
    stored = torch.from_numpy(index.index.reconstruct_n(0, len(index)))
    torch.testing.assert_close(stored, expected, atol=1e-5, rtol=0)


def test_image_search_finds_the_query_image_first(image_index):
    index, out = image_index
    searcher = ImageSearcher.from_directory(out)
    for path in index.names:
        hits = searcher.search_image(Image.open(path), k=3)
        assert len(hits) == 3
        assert hits[0].name == path
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("templates", ["none", "cifar"])
def test_text_search_equals_brute_force(checkpoint, image_index, templates):
    index, out = image_index
    searcher = ImageSearcher.from_directory(out, templates=templates)
    hits = searcher.search_text("a photo of a cat", k=4)
    assert len(hits) == 4
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    model = vlkit.from_pretrained(checkpoint)
    tokenizer, transform = vlkit.get_tokenizer(checkpoint), vlkit.get_transform(checkpoint)
    query = build_zero_shot_classifier(model, tokenizer, ["a photo of a cat"],
                                       load_templates(templates))  # fmt: skip
    images = encode_image_files(model, transform, index.names)
    expected_scores, expected_positions = (query @ images.T)[0].topk(4)
    assert [h.position for h in hits] == expected_positions.tolist()
    assert [h.name for h in hits] == [index.names[i] for i in expected_positions]
    torch.testing.assert_close(torch.tensor([h.score for h in hits]), expected_scores, atol=1e-5,
                               rtol=0)  # fmt: skip


def test_searcher_rejects_a_wrong_or_missing_model(image_index, tmp_path):
    index, _ = image_index
    other = vlkit.create_model("small-64")
    with pytest.raises(ValueError, match="192-dimensional embeddings but the index holds 64"):
        ImageSearcher(index, other, None, vlkit.get_transform(other))
    moved = EmbeddingIndex(index.index, index.names, index.kind,
                           {**index.metadata, "model": str(tmp_path / "gone")})  # fmt: skip
    moved.save(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        ImageSearcher.from_directory(tmp_path / "moved")


def _cli(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)  # the `vlkit` command's own parser


def test_cli_index_and_search_match_the_library(checkpoint, photos, tmp_path, capsys):
    out = str(tmp_path / "cli.index")
    args = ["index", "--model", str(checkpoint), "--images", str(photos), "--out", out]
    assert main([*args, "--kind", "hnsw"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["images"], summary["kind"], summary["dim"]) == (5, "hnsw", 64)
    assert EmbeddingIndex.load(out).kind == "hnsw"

    query = ["--text", "a rocket", "--k", "3", "--templates", "cifar"]
    assert main(["search", "--index", out, *query, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    library = ImageSearcher.from_directory(out, templates="cifar").search_text("a rocket", k=3)
    assert results == [
        {"rank": i + 1, "name": h.name, "score": h.score, "position": h.position}
        for i, h in enumerate(library)
    ]
    assert main(["search", "--index", out, *query]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and table[0].endswith(library[0].name)

    coffee = str((photos / "coffee.jpg").resolve())
    by_image = search_command(_cli(["search", "--index", out, "--image", coffee]))
    assert len(by_image) == 5 and by_image[0]["name"] == coffee
    assert main(["search", "--index", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "nope" in capsys.readouterr().err

    with pytest.raises(FileNotFoundError, match="no such index directory"):
        search_command(_cli(["search", "--index", str(tmp_path / "nope"), "--text", "x"]))
    with pytest.raises(ValueError, match="cannot load image"):
        search_command(_cli(["search", "--index", out, "--image", str(photos / "notes.txt")]))
    with pytest.raises(ValueError, match="no image files"):
        index_command(_cli([*args[:3], "--images", out, "--out", str(tmp_path / "x")]))
