"""Embeddings on every mesh shape equal the single-device result; parameters split as the rules say."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxembed.api import Embedder
from jaxembed.parallel.mesh import MeshShape, make_mesh
from jaxembed.weights.convert import convert
from tests.helpers import save_tiny_decoder, save_tiny_model
from tests.texts import varied_texts

# Data only, both axes, model only ((1, 1) and (4, 2) add nothing these three do not check).
MESHES = [(8, 1), (2, 4), (1, 8)]
GRID = dict(seq_lengths=(16, 32, 64, 128), token_budget=256)


@pytest.fixture(scope="module")
def texts():
    return varied_texts()[:40]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    save_tiny_model("bert", path)
    return path


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-mistral")
    save_tiny_decoder("mistral", path)
    return path


@pytest.fixture(scope="module")
def reference(texts, bert_dir, mistral_dir):
    """Single-device embeddings of `texts` per family, computed once."""
    return {
        family: _embedder(path, None).embed(texts, truncate=True)
        for family, path in (("bert", bert_dir), ("mistral", mistral_dir))
    }


def _embedder(path, mesh_shape: tuple[int, int] | None) -> Embedder:
    if mesh_shape is None:  # the reference: one device, no mesh given
        return Embedder.from_pretrained(path, dtype="float32", compile_cache_dir=False, **GRID)
    devices = jax.devices()[: mesh_shape[0] * mesh_shape[1]]
    mesh = make_mesh(MeshShape(*mesh_shape), devices)
    return Embedder.from_pretrained(
        path, dtype="float32", mesh=mesh, compile_cache_dir=False, **GRID
    )


def _specs(embedder: Embedder) -> dict[str, P]:
    flat = jax.tree_util.tree_leaves_with_path(embedder.model.params)
    return {".".join(str(k.key) for k in path): leaf.sharding.spec for path, leaf in flat}


# Every mesh kind for the encoder (data only, both axes, model only); the decoder on the mesh
# that splits both axes (its sharding rules are checked leaf by leaf below).
@pytest.mark.parametrize(
    "family, mesh_shape",
    [*[("bert", m) for m in MESHES], ("mistral", (2, 4))],
    ids=lambda c: c if isinstance(c, str) else f"{c[0]}x{c[1]}",
)
def test_mesh_matches_single_device(family, mesh_shape, texts, bert_dir, mistral_dir, reference):
    path = bert_dir if family == "bert" else mistral_dir
    on_mesh = _embedder(path, mesh_shape)
    assert dict(on_mesh.runner.mesh.shape) == {"data": mesh_shape[0], "model": mesh_shape[1]}
    # Every batch size is a multiple of the data axis: each device gets whole rows.
    assert all(b % mesh_shape[0] == 0 for b in on_mesh.grid.batch_sizes)
    result = on_mesh.embed(texts, truncate=True)
    assert result.shape == reference[family].shape
    assert np.abs(result - reference[family]).max() <= 1e-5


def test_encoder_parameter_shardings(bert_dir):
    specs = _specs(_embedder(bert_dir, (2, 4)))  # 4 heads, 64 MLP units: both split 4 ways
    assert specs["layers.attention.query.kernel"] == P(None, None, "model", None)
    assert specs["layers.attention.query.bias"] == P(None, "model", None)
    assert specs["layers.attention.output.kernel"] == P(None, "model", None, None)
    assert specs["layers.attention.output.bias"] == P(None, None)
    assert specs["layers.intermediate.kernel"] == P(None, None, "model")
    assert specs["layers.intermediate.bias"] == P(None, "model")
    assert specs["layers.output.kernel"] == P(None, "model", None)
    assert specs["layers.attention_norm.scale"] == P(None, None)
    # 30,522 rows do not divide by 4: the table stays whole rather than failing.
    assert specs["embeddings.word.embedding"] == P(None, None)

    specs = _specs(_embedder(bert_dir, (1, 8)))  # 4 heads cannot split 8 ways; 64 units can
    assert specs["layers.attention.query.kernel"] == P(None, None, None, None)
    assert specs["layers.intermediate.kernel"] == P(None, None, "model")


def test_decoder_parameter_shardings(mistral_dir):
    specs = _specs(_embedder(mistral_dir, (2, 4)))  # 4 query heads, 2 KV heads, 128 MLP
    assert specs["layers.attention.q.kernel"] == P(None, None, "model", None)
    assert specs["layers.attention.k.kernel"] == P(None, None, None, None)  # 2 KV heads, 4 ways
    assert specs["layers.attention.o.kernel"] == P(None, "model", None, None)
    assert specs["layers.gate.kernel"] == P(None, None, "model")
    assert specs["layers.up.kernel"] == P(None, None, "model")
    assert specs["layers.down.kernel"] == P(None, "model", None)
    assert specs["layers.input_norm.scale"] == P(None, None)

    specs = _specs(_embedder(mistral_dir, (4, 2)))
    assert specs["layers.attention.k.kernel"] == P(None, None, "model", None)  # 2 KV heads, 2 ways
    assert specs["layers.attention.v.kernel"] == P(None, None, "model", None)


@pytest.mark.parametrize("mesh_shape", [(4, 2), (1, 8)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_orbax_checkpoint_restores_on_any_mesh(tmp_path, bert_dir, mesh_shape, texts, reference):
    converted = tmp_path / "converted"
    convert(bert_dir, converted, dtype="float32", show_progress=False)
    embedder = _embedder(converted, mesh_shape)
    assert embedder.model.source_format == "orbax"
    kernel = embedder.model.params["layers"]["intermediate"]["kernel"]  # [layers, 32, 64]
    model = mesh_shape[1]
    assert kernel.sharding.spec == P(None, None, "model")
    # Each device holds only its slice, restored straight into place.
    assert {s.data.shape for s in kernel.addressable_shards} == {(2, 32, 64 // model)}
    assert len(kernel.addressable_shards) == 8
    assert np.abs(embedder.embed(texts, truncate=True) - reference["bert"]).max() <= 1e-5


@pytest.fixture(scope="module", params=["clip", "siglip"])
def dual_encoder(request, tmp_path_factory):
    """A tiny CLIP / SigLIP and its single-device text, image and video embeddings."""
    from tests.helpers import generated_image, save_tiny_clip, save_tiny_siglip

    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    (save_tiny_clip if request.param == "clip" else save_tiny_siglip)(path)
    images = [generated_image((30 + 7 * i, 40), "RGB", seed=i) for i in range(11)]
    captions = ["a photo of the cat", "the dog", "x y z"]
    single = _embedder(path, None)
    reference = (single.embed(captions), single.embed_images(images), single.embed_video(images))
    return path, captions, images, reference


@pytest.mark.parametrize("mesh_shape", [(8, 1), (2, 4), (1, 8)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_dual_encoders_on_a_mesh_match_single_device(dual_encoder, mesh_shape):
    path, captions, images, (texts_ref, images_ref, video_ref) = dual_encoder
    on_mesh = _embedder(path, mesh_shape)
    assert all(b % mesh_shape[0] == 0 for b in on_mesh.images.batch_sizes)
    np.testing.assert_allclose(on_mesh.embed(captions), texts_ref, atol=1e-5)
    np.testing.assert_allclose(on_mesh.embed_images(images), images_ref, atol=1e-5)
    np.testing.assert_allclose(on_mesh.embed_video(images), video_ref, atol=1e-5)
    if mesh_shape == (2, 4):  # 4 heads and the MLP split over `model` in both towers
        specs = _specs(on_mesh)
        assert specs["vision_model.encoder.layers.attention.query.kernel"] == P(
            None, None, "model", None
        )
        assert specs["text_model.encoder.layers.mlp.fc1.kernel"] == P(None, None, "model")


IMPLEMENTATIONS_UNDER_TEST = (
    ("blocked", dict(block_q=16, block_k=16)),
    ("splash", dict(interpret=True)),  # shard_map over rows (data) and heads (model)
)


def _family_dir(family, bert_dir, mistral_dir, tmp_path_factory):
    if family == "bert":
        return bert_dir
    if family == "mistral":
        return mistral_dir
    path = tmp_path_factory.mktemp(f"tiny-{family}")
    if family == "roberta":
        save_tiny_model("roberta", path, seed=5)
    else:
        save_tiny_decoder(family, path, seed=5)
    return path


# (family, mesh, packings): 2x4 splits rows and heads both (8x1 splits rows only: the
# same kernels on fewer rows, covered by test_mesh_matches_single_device); padded rows are
# checked on the two families whose masks differ most (a window, bidirectional).
MESH_CASES = [
    ("bert", (2, 4), (True, False)),
    ("mistral", (2, 4), (True, False)),
    ("roberta", (2, 4), (True,)),
    ("qwen3", (2, 4), (True,)),
]


@pytest.mark.parametrize("family, mesh_shape, packings", MESH_CASES, ids=[c[0] for c in MESH_CASES])
def test_attention_implementations_on_a_mesh(
    family, mesh_shape, packings, texts, bert_dir, mistral_dir, tmp_path_factory
):
    """Blocked and splash equal xla on the mesh (≤ 2e-6), packed (the default) and padded;
    Mistral's window (8) is shorter than the inputs, Qwen3 has one KV head."""
    from jaxembed.models.attention import AttentionConfig

    path = _family_dir(family, bert_dir, mistral_dir, tmp_path_factory)
    mesh = make_mesh(MeshShape(*mesh_shape), jax.devices()[: mesh_shape[0] * mesh_shape[1]])

    def on_mesh(attention, packing):
        return Embedder.from_pretrained(
            path,
            dtype="float32",
            mesh=mesh,
            compile_cache_dir=False,
            attention=attention,
            packing=packing,
            **GRID,
        ).embed(texts, truncate=True)

    for packing in packings:
        reference = on_mesh(AttentionConfig("xla"), packing)
        for impl, options in IMPLEMENTATIONS_UNDER_TEST:
            ours = on_mesh(AttentionConfig(impl, **options), packing)
            assert np.abs(ours - reference).max() <= 2e-6, (impl, packing)


def test_dual_encoder_attention_implementations_on_a_mesh(dual_encoder):
    """CLIP / SigLIP text (causal / bidirectional) and vision towers on a 2x4 mesh."""
    from jaxembed.models.attention import AttentionConfig

    path, captions, images, _ = dual_encoder
    mesh = make_mesh(MeshShape(2, 4), jax.devices()[:8])

    def on_mesh(attention):
        embedder = Embedder.from_pretrained(
            path, dtype="float32", mesh=mesh, compile_cache_dir=False, attention=attention, **GRID
        )
        return embedder.embed(captions), embedder.embed_images(images)

    text_ref, image_ref = on_mesh(AttentionConfig("xla"))
    for impl, options in IMPLEMENTATIONS_UNDER_TEST:
        text, image = on_mesh(AttentionConfig(impl, **options))
        assert np.abs(text - text_ref).max() <= 2e-6, impl
        assert np.abs(image - image_ref).max() <= 2e-6, impl


@pytest.mark.parametrize("mesh_shape", [(2, 4)])  # data and model axes both split
def test_reranker_on_a_mesh_scores_as_on_one_device(tmp_path_factory, mesh_shape):
    """A cross-encoder's backbone and head split over the mesh score as on one device."""
    from jaxembed.api import Reranker
    from tests.helpers import save_tiny_cross_encoder

    path = tmp_path_factory.mktemp("tiny-cross-encoder")
    save_tiny_cross_encoder("bert", path, seed=1)
    pairs = [("what is a dog", t) for t in varied_texts()[:24]]
    one = Reranker(_embedder(path, None))
    many = Reranker(_embedder(path, mesh_shape))
    try:
        np.testing.assert_allclose(many.predict(pairs), one.predict(pairs), atol=1e-5)
    finally:
        one.close()
        many.close()


@pytest.mark.parametrize("mesh_shape", [(2, 4)])  # data and model axes both split
@pytest.mark.parametrize("family", ["modernbert", "nomic_bert"])
def test_rotary_encoders_on_a_mesh_match_one_device(tmp_path_factory, texts, mesh_shape, family):
    from tests.helpers import save_tiny_modernbert, save_tiny_nomic_bert

    path = tmp_path_factory.mktemp(f"tiny-{family}")
    {"modernbert": save_tiny_modernbert, "nomic_bert": save_tiny_nomic_bert}[family](path, seed=3)
    one = _embedder(path, None).embed(texts, truncate=True)
    many = _embedder(path, mesh_shape).embed(texts, truncate=True)
    np.testing.assert_allclose(many, one, atol=2e-5)


@pytest.mark.parametrize("mesh_shape", [(2, 4)])
def test_jina_tasks_on_a_mesh_match_one_device(tmp_path_factory, texts, mesh_shape):
    """jina-v3's task stacks are parameters too: sharded with the rest, same vectors per task."""
    from tests.helpers import save_tiny_jina_v3

    path = tmp_path_factory.mktemp("tiny-jina-v3")
    save_tiny_jina_v3(path, seed=3)
    one, many = _embedder(path, None), _embedder(path, mesh_shape)
    for task in (None, "retrieval.query", "classification"):
        want = one.embed(texts, truncate=True, task=task)
        np.testing.assert_allclose(many.embed(texts, truncate=True, task=task), want, atol=2e-5)


@pytest.mark.parametrize("mesh_shape", [(2, 4)])
def test_splade_on_a_mesh_matches_one_device(tmp_path_factory, texts, mesh_shape):
    """The MLM head's tied decoder is the vocab-sharded word table: same sparse vectors."""
    from tests.helpers import save_tiny_splade

    path = tmp_path_factory.mktemp("tiny-splade")
    save_tiny_splade(path, seed=3)
    one = _embedder(path, None).embed(texts, truncate=True)
    many = _embedder(path, mesh_shape).embed(texts, truncate=True)
    np.testing.assert_allclose(many, one, atol=2e-5)


@pytest.mark.parametrize("mesh_shape", [(2, 4)])
def test_qwen3_vl_on_a_mesh_matches_one_device(tmp_path_factory, mesh_shape):
    """A vision-language model's parameters sharded like the rest (tower and decoder), its
    items (text, image, video frames) equal to one device's."""
    from PIL import Image

    from jaxembed.engine.request.jobs import EmbedItem
    from jaxembed.engine.workloads.qwen_vl import VideoClip
    from tests.helpers import save_tiny_qwen3_vl

    path = tmp_path_factory.mktemp("tiny-qwen3-vl")
    save_tiny_qwen3_vl(path, seed=2)
    rng = np.random.default_rng(0)
    picture = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    frames = [picture(40, 40) for _ in range(4)]
    items = [
        EmbedItem(text="a dog"),
        EmbedItem(text="a cat", image=picture(90, 60)),
        EmbedItem(video=VideoClip(frames, [0, 1, 2, 3], 2.0)),
    ]
    one, many = _embedder(path, None), _embedder(path, mesh_shape)
    specs = _specs(many)
    assert any(s != P() for k, s in specs.items() if k.startswith("visual."))
    np.testing.assert_allclose(many.embed_items(items), one.embed_items(items), atol=2e-5)
