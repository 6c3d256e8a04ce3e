"""sentence-transformers Router models (asymmetric query/document paths) as its installed
version saves them: each route loads as a model of its own and equals `encode_query` /
`encode_document`; the inference-free sparse kind (a SparseStaticEmbedding query side, a
SPLADE document side) and a dense kind (a StaticEmbedding query side, a BERT document side,
a Normalize after the Router)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxembed.api import Embedder
from jaxembed.errors import InvalidInputError, ModelLoadError
from jaxembed.routes import read_router
from tests.helpers import save_dense_router, save_sparse_router
from tests.texts import long_passages

TEXTS = ["what is a panda?", "hello there", "x", *long_passages(3, words=90)]


@pytest.fixture(scope="module")
def sparse_router(tmp_path_factory):
    return save_sparse_router(tmp_path_factory.mktemp("routers") / "sparse-router", seed=2)


@pytest.fixture(scope="module")
def dense_router(tmp_path_factory):
    return save_dense_router(tmp_path_factory.mktemp("routers") / "dense-router", seed=3)


def _dense(x) -> np.ndarray:
    return x.to_dense().numpy() if hasattr(x, "to_dense") else np.asarray(x)


def _ours(path, route: str) -> np.ndarray:
    embedder = Embedder.from_pretrained(path, route=route, compile_cache_dir=False)
    try:
        assert embedder.card.name == path.name.lower()
        return embedder.embed(TEXTS, truncate=True, prompt_name=route)
    finally:
        embedder.close()


def test_inference_free_sparse_router_equals_encode_query_and_document(sparse_router):
    from sentence_transformers.sparse_encoder import SparseEncoder

    reference = SparseEncoder(str(sparse_router), device="cpu")
    layout = read_router(sparse_router)
    assert layout.route_names == ("query", "document") and layout.default_route == "document"
    for route, want in (
        ("query", _dense(reference.encode_query(TEXTS, convert_to_tensor=True))),
        ("document", _dense(reference.encode_document(TEXTS, convert_to_tensor=True))),
    ):
        ours = _ours(sparse_router, route)
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
        assert ((ours != 0) == (want != 0)).all()  # the same vocabulary entries, exactly
    # The query side weighs each present token once: no more entries than distinct tokens.
    assert (_ours(sparse_router, "query")[0] != 0).sum() <= len(TEXTS[0].split()) + 2


def test_dense_router_equals_encode_query_and_document(dense_router):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(dense_router), device="cpu")
    for route, want in (
        ("query", reference.encode_query(TEXTS)),
        ("document", reference.encode_document(TEXTS)),
    ):
        ours = _ours(dense_router, route)
        cos = np.sum(ours * want, axis=1)  # both normalised by the Normalize after the Router
        assert cos.min() >= 0.99999, (route, cos)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)


def test_routes_are_chosen_as_sentence_transformers_chooses_them(dense_router, tmp_path):
    layout = read_router(dense_router)
    assert layout.route_for("query") == "query"
    assert layout.route_for("document") == "document"
    assert layout.route_for(None) == "document"  # encode(): the default route
    assert layout.route_for("classification") == "document"  # a prompt, not a task
    with pytest.raises(ModelLoadError, match=r"routes \['query', 'document'\].*route="):
        Embedder.from_pretrained(dense_router, compile_cache_dir=False)
    with pytest.raises(ModelLoadError, match="is not a Router"):
        Embedder.from_pretrained(None, route="query", compile_cache_dir=False)
    # A Router whose routes do not serve queries refuses them, as sentence-transformers does.
    import dataclasses

    documents_only = dataclasses.replace(
        layout, routes={"document": layout.routes["document"]}, mappings={}
    )
    with pytest.raises(InvalidInputError, match="none serves input_type 'query'"):
        documents_only.route_for("query")


def test_cli_embed_takes_the_route_of_its_prompt(dense_router, capsys):
    import json

    from jaxembed.cli import main

    assert main(["embed", "--model", str(dense_router), "--prompt", "query", *TEXTS[:2]]) == 0
    got = [json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose(got, _ours(dense_router, "query")[:2], atol=1e-6)


def test_embed_dataset_takes_the_route_of_its_prompt(dense_router, tmp_path):
    import json

    import pyarrow.parquet as pq

    from jaxembed.bulk import BulkOptions, embed_dataset

    corpus = tmp_path / "queries.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    options = BulkOptions(model=str(dense_router), prompt_name="query", truncate=True)
    embed_dataset([corpus], tmp_path / "out", options, progress=False)
    table = pq.read_table(tmp_path / "out")
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, _ours(dense_router, "query"), atol=1e-6)
