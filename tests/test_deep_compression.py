"""Weight sharing (cluster pass), Huffman coding and the Deep Compression codec of fxcomp.save."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import fxcomp
from fxcomp import LoadError, RecipeError, SaveError
from fxcomp.export.deep import CodecError, decode_tensor, encode_tensor
from fxcomp.export.huffman import HuffmanError, code_lengths, decode, encode
from fxcomp.passes import SharedWeights, share_weights
from tests.conftest import SmallCNN


@pytest.fixture
def sparse_shared() -> tuple[fxcomp.CompressionResult, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    recipe = {"passes": [{"pass": "sparsify", "sparsity": 0.8}, {"pass": "cluster", "bits": {"conv": 4, "linear": 3}}]}
    return fxcomp.compress(SmallCNN().eval(), x, recipe), x


# -- cluster ---------------------------------------------------------------------------------------


def test_cluster_keeps_zeros_and_at_most_2_to_the_bits_values(sparse_shared) -> None:
    result, _ = sparse_shared
    model = result.model
    for name, bits in (("conv1", 4), ("conv2", 4), ("fc", 3)):
        weight = model.get_submodule(name).weight.detach()
        assert weight[weight != 0].unique().numel() <= 2**bits
        assert (weight == 0).float().mean().item() == pytest.approx(0.8, abs=0.01)
    plan = {entry["layer"]: entry for entry in result.plan[1]["plan"]["layers"]}
    assert plan["fc"] == {"layer": "fc", "bits": 3, "numel": 320, "nonzero": 64, "max_clusters": 8}
    assert set(result.plan[1]["stats"]["relative_error"]) == {"conv1", "conv2", "fc"}


def test_kmeans_uses_linear_initialization_and_converges_to_interval_means() -> None:
    from fxcomp_plugins.cluster import kmeans_1d

    values = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.1, 9.9, 10.0])
    centroids, labels = kmeans_1d(values, 3)
    torch.testing.assert_close(centroids, torch.tensor([0.1, 5.05, 9.95], dtype=torch.float64))
    assert labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    few, labels = kmeans_1d(torch.tensor([1.0, 1.0, 3.0]), 8)  # empty clusters are dropped
    assert few.tolist() == [1.0, 3.0] and labels.tolist() == [0, 0, 1]


def test_kmeans_drops_the_centroids_left_in_a_pruned_gap() -> None:
    from fxcomp_plugins.cluster import kmeans_1d

    values = torch.tensor([-1.0, -0.75, -0.5, 0.5, 0.75, 0.875, 1.0]).repeat(3)  # linear initialization puts 2 of 6 centroids in the gap
    centroids, labels = kmeans_1d(values, 6)
    assert centroids.tolist() == [-1.0, -0.625, 0.625, 0.9375]  # seven distinct values, four clusters
    assert labels.tolist() == [0, 1, 1, 2, 2, 3, 3] * 3


def test_kmeans_keeps_every_value_when_there_are_no_more_than_centroids() -> None:
    from fxcomp_plugins.cluster import kmeans_1d

    values = torch.tensor([0.3, 0.1, 5.0, 0.2, 0.1])  # linear initialization left 2 of 4 centroids empty
    centroids, labels = kmeans_1d(values, 4)
    assert centroids.tolist() == torch.tensor([0.1, 0.2, 0.3, 5.0]).double().tolist()
    assert labels.tolist() == [2, 0, 3, 1, 0]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 10))  # 80 distinct weights, 256 centroids allowed
    result = fxcomp.compress(model, torch.randn(2, 8), {"passes": [{"pass": "cluster", "bits": 8}]})
    assert result.plan[0]["stats"]["clusters"] == {"0": 80} and result.plan[0]["stats"]["relative_error"] == {"0": 0.0}
    assert torch.equal(result.model.get_submodule("0").weight, model[0].weight)


def test_cluster_statistics_give_the_centroids_each_layer_kept(sparse_shared) -> None:
    result, _ = sparse_shared
    plan = {entry["layer"]: entry for entry in result.plan[1]["plan"]["layers"]}
    kept = result.plan[1]["stats"]["clusters"]
    assert set(kept) == set(plan) == {"conv1", "conv2", "fc"}
    for name, entry in plan.items():
        shared = result.model.get_submodule(name).parametrizations.weight[1]
        weight = result.model.get_submodule(name).weight.detach()
        assert len(shared.centroids) == kept[name] == weight[weight != 0].unique().numel()
        assert 1 <= kept[name] <= entry["max_clusters"]


def test_centroid_gradient_is_the_sum_of_its_members_gradients() -> None:
    layer = nn.Linear(6, 4)
    assignment = torch.tensor([[0, 1, 2, -1, 0, 1]] * 4)
    share_weights(layer, "weight", torch.tensor([0.5, -1.0, 2.0]), assignment)
    upstream = torch.randn(4, 6)
    (layer.weight * upstream).sum().backward()
    shared = layer.parametrizations.weight[0]
    expected = torch.stack([upstream[assignment == k].sum() for k in range(3)])
    torch.testing.assert_close(shared.centroids.grad, expected)
    assert layer.parametrizations.weight.original.grad is None  # only the codebook trains
    assert torch.equal(layer.weight[:, 3], torch.zeros(4))


def test_recover_moves_centroids_but_not_the_assignment_or_the_zeros(sparse_shared) -> None:
    result, x = sparse_shared
    data = [(torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))) for _ in range(4)]
    trained = fxcomp.recover(result.model, data, epochs=2, lr=0.1, progress=False).model
    before = result.model.conv2.parametrizations.weight[1]
    after = trained.conv2.parametrizations.weight[1]
    assert torch.equal(before.assignment, after.assignment)
    assert not torch.equal(before.centroids, after.centroids)
    old, new = result.model.conv2.weight.detach(), trained.conv2.weight.detach()
    assert torch.equal(old == 0, new == 0)
    assert new[new != 0].unique().numel() <= 16


class TiedLM(nn.Module):
    """An embedding whose weight the output layer reuses (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mid, self.head = nn.Embedding(20, 8), nn.Linear(8, 8), nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.emb(tokens))))


def test_cluster_skips_a_weight_tied_to_another_module(tmp_path) -> None:
    torch.manual_seed(0)
    tokens = torch.randint(0, 20, (4, 5))
    result = fxcomp.compress(TiedLM(), tokens, {"passes": [{"pass": "cluster", "bits": 2}]})
    plan = result.plan[0]["plan"]
    assert [entry["layer"] for entry in plan["layers"]] == ["mid"]
    assert plan["skipped"] == [{"layer": "head", "reason": "its weight is shared with another module"}]
    model = result.model
    assert model.head.weight is model.emb.weight and model.emb.weight.requires_grad
    fxcomp.save(model, tmp_path / "tied.fxc", codec="deep")
    assert torch.equal(fxcomp.load(tmp_path / "tied.fxc")(tokens), model(tokens))


def test_cluster_options_are_checked() -> None:
    with pytest.raises(RecipeError, match=r"passes\[0\].bits.conv: expected a number of bits in \[1, 16\]"):
        fxcomp.compress(SmallCNN(), torch.randn(1, 3, 8, 8), {"passes": [{"pass": "cluster", "bits": {"conv": 0}}]})
    for bits in ({"rnn": 4}, {}):
        with pytest.raises(RecipeError, match=r"bits: expected a number of bits or a mapping like \{conv: 8, linear: 5\}"):
            fxcomp.compress(SmallCNN(), torch.randn(1, 3, 8, 8), {"passes": [{"pass": "cluster", "bits": bits}]})
    for bits, expected in ((np.int64(3), [3, 3, 3]), ({"conv": np.int32(2)}, [2, 2])):  # NumPy whole numbers work as plain ones
        result = fxcomp.compress(SmallCNN(), torch.randn(1, 3, 8, 8), {"passes": [{"pass": "cluster", "bits": bits}]})
        assert [layer["bits"] for layer in result.plan[0]["plan"]["layers"]] == expected


def test_shared_weights_round_trip_through_save_and_load(sparse_shared, tmp_path) -> None:
    result, x = sparse_shared
    path = tmp_path / "shared.fxc"
    fxcomp.save(result.model, path)
    loaded = fxcomp.load(path)
    assert isinstance(loaded.conv2.parametrizations.weight[1], SharedWeights)
    assert torch.equal(loaded(x), result.model(x))


# -- Huffman ---------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=400))
def test_huffman_round_trips_any_symbols(symbols) -> None:
    symbols = np.array(symbols, dtype=np.int64)
    lengths = code_lengths(np.bincount(symbols, minlength=41))
    data, bits = encode(symbols, lengths)
    assert np.array_equal(decode(data, bits, lengths, len(symbols)), symbols)


@pytest.mark.parametrize("chunk_bits", [1, 3, 64])
def test_huffman_decodes_across_chunk_boundaries(chunk_bits, monkeypatch) -> None:
    from fxcomp.export import huffman

    monkeypatch.setattr(huffman, "_CHUNK_BITS", chunk_bits)  # codes straddle the chunks the stream is read in
    symbols = np.random.default_rng(chunk_bits).zipf(1.6, 2000) % 37
    lengths = code_lengths(np.bincount(symbols, minlength=37))
    data, bits = encode(symbols, lengths)
    assert np.array_equal(decode(data, bits, lengths, len(symbols)), symbols)
    with pytest.raises(HuffmanError, match="the stream ends"):
        decode(data, bits - 1, lengths, len(symbols))
    with pytest.raises(HuffmanError, match="bits left over"):
        decode(data, bits, lengths, len(symbols) - 1)


def test_huffman_codes_skewed_data_near_its_entropy_and_limits_lengths() -> None:
    rng = np.random.default_rng(0)
    symbols = rng.geometric(0.5, size=20_000) - 1
    frequencies = np.bincount(symbols)
    lengths = code_lengths(frequencies)
    _, bits = encode(symbols, lengths)
    p = frequencies[frequencies > 0] / len(symbols)
    entropy = -(p * np.log2(p)).sum() * len(symbols)
    assert entropy <= bits <= entropy * 1.05
    assert code_lengths(np.array([2**i for i in range(40)])).max() <= 24


def test_huffman_refuses_truncated_or_garbled_streams() -> None:
    symbols = np.array([0, 1, 2, 2, 2, 3, 0, 1])
    lengths = code_lengths(np.bincount(symbols))
    data, bits = encode(symbols, lengths)
    with pytest.raises(HuffmanError):
        decode(data, bits - 1, lengths, len(symbols))
    with pytest.raises(HuffmanError, match="prefix code"):
        decode(data, bits, np.array([1, 1, 1, 1]), len(symbols))


# -- the codec -------------------------------------------------------------------------------------


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.float64: torch.int64}[tensor.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_codec_restores_bit_identical_tensors_with_filler_zeros(dtype) -> None:
    torch.manual_seed(0)
    weight = torch.randn(40, 50).to(dtype)
    weight[torch.rand(40, 50) < 0.97] = 0
    weight[0, 0], weight[39, 49], weight[10, 10] = -0.0, float("nan"), float("inf")
    weight[20:35] = 0  # a gap of 750 positions: many fillers at 2 index bits
    meta, payload, size = encode_tensor(weight, index_bits=2)
    assert meta["entries"] > size.nonzero  # filler zeros were needed
    assert torch.equal(_bits(decode_tensor(meta, payload)), _bits(weight))


def test_codec_of_shared_weights_uses_the_codebook_bits() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8)[torch.randint(0, 8, (100, 300))]
    weight[torch.rand(100, 300) < 0.9] = 0
    meta, payload, size = encode_tensor(weight, index_bits=5)
    assert size.value_bits == 4  # 8 centroids and the filler zero
    nonzero = int((weight != 0).sum())
    assert size.coded_bytes == pytest.approx((meta["entries"] * (4 + 5) + 8 * 32) / 8)
    assert size.huffman_bytes < size.coded_bytes
    assert size.dense_bytes / size.huffman_bytes > 25 and size.nonzero == nonzero


def test_deep_save_reports_sizes_and_loads_bit_identical(sparse_shared, tmp_path) -> None:
    result, x = sparse_shared
    path = tmp_path / "deep.fxc"
    report = fxcomp.save(result.model, path, codec="deep", index_bits=4)
    assert {layer.name for layer in report.layers} == {"conv1.weight", "conv2.weight", "fc.weight"}
    assert report.ratio > 8 and report.ratio_before_huffman > 8
    assert "ratio (Huffman)" in str(report)
    loaded = fxcomp.load(path)
    assert type(loaded.conv2) is nn.Conv2d  # masks and shared weights were baked in
    assert type(loaded).__name__ == type(result.model).__name__ != "GraphModule"
    for name in ("conv1", "conv2", "fc"):
        assert torch.equal(_bits(loaded.get_submodule(name).weight), _bits(result.model.get_submodule(name).weight.detach()))
    assert torch.equal(loaded(x), result.model(x))
    assert fxcomp.save(result.model, tmp_path / "plain.fxc") is None
    assert path.stat().st_size < (tmp_path / "plain.fxc").stat().st_size / 2


def test_corrupted_or_truncated_codec_files_are_refused(sparse_shared, tmp_path) -> None:
    result, _ = sparse_shared
    path = tmp_path / "deep.fxc"
    fxcomp.save(result.model, path, codec="deep")
    data = torch.load(path, weights_only=True)
    data["tensors"]["coded"][40] ^= 0x10
    corrupted = tmp_path / "corrupted.fxc"
    torch.save(data, corrupted)
    with pytest.raises(LoadError, match="malformed"):
        fxcomp.load(corrupted)
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.fxc"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LoadError):
        fxcomp.load(truncated)
    data = torch.load(path, weights_only=True)
    del data["tensors"]["coded"]
    torch.save(data, corrupted)
    with pytest.raises(LoadError, match="coded weights without their bytes"):
        fxcomp.load(corrupted)
    with pytest.raises(CodecError):
        decode_tensor({"dtype": "float32", "shape": [2, 2], "index_bits": 2, "entries": 3}, {})
    meta, payload, _ = encode_tensor(torch.randn(4, 5), index_bits=3)
    for field, value in (("index_bits", 10**30), ("index_bits", -1), ("shape", [2**62, 2**62])):
        with pytest.raises(CodecError):  # an OverflowError or an allocation of exabytes before
            decode_tensor({**meta, field: value}, payload)
    assert zipfile.is_zipfile(path)


def test_save_refuses_unknown_codecs(sparse_shared, tmp_path) -> None:
    result, _ = sparse_shared
    with pytest.raises(SaveError, match="codec 'zip' is not one of: deep"):
        fxcomp.save(result.model, tmp_path / "m.fxc", codec="zip")
    with pytest.raises(SaveError, match="index_bits must be between 1 and 16"):
        fxcomp.save(result.model, tmp_path / "m.fxc", codec="deep", index_bits=0)
    unused = r"^index_bits sets the deep codec's position width; add codec='deep' \(a recipe's save: \{codec: deep\}\) or drop it$"
    with pytest.raises(SaveError, match=unused):
        fxcomp.save(result.model, tmp_path / "m.fxc", index_bits=5)
    recipe = {"passes": [], "save": {"index_bits": 5}}  # refused when the recipe loads, before any pass runs
    with pytest.raises(RecipeError, match=r"^save.index_bits: sets the deep codec's position width; add `codec: deep` or drop it$"):
        fxcomp.compress(SmallCNN(), torch.randn(1, 3, 8, 8), recipe)


def test_a_recipe_save_section_sets_how_the_result_is_saved(tmp_path) -> None:
    recipe = {"passes": [{"pass": "sparsify", "sparsity": 0.9}], "save": {"codec": "deep", "index_bits": 3}}
    result = fxcomp.compress(SmallCNN().eval(), torch.randn(1, 3, 8, 8), recipe)
    assert result.save_options == {"codec": "deep", "index_bits": 3}
    report = result.save(tmp_path / "m.fxc")
    assert report is not None and {layer.index_bits for layer in report.layers} == {3}
    with pytest.raises(RecipeError, match="save.codec: expected deep"):
        fxcomp.compress(SmallCNN(), torch.randn(1, 3, 8, 8), {"passes": [], "save": {"codec": "gzip"}})


def test_the_shipped_deep_compression_recipe_runs_end_to_end(tmp_path) -> None:
    from fxcomp.data import digits

    data = digits()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    trained = fxcomp.recover(model, data, epochs=3, lr=0.05, progress=False).model.eval()
    recipe = Path(__file__).resolve().parent.parent / "examples" / "recipes" / "deep_compression.yaml"
    result = fxcomp.compress(trained, data.test.tensors[0][:4], recipe, train_data=data.train, val_data=data.val)
    assert [record["pass"] for record in result.plan][-2:] == ["cluster", "recover"]
    report = result.save(tmp_path / "deep.fxc")
    assert report.ratio > 10
    weights = fxcomp.load(tmp_path / "deep.fxc").get_submodule("1").weight
    assert (weights == 0).float().mean() == pytest.approx(0.93, abs=0.02)
    assert weights[weights != 0].unique().numel() <= 32


@pytest.mark.parametrize(
    "layout",
    [
        lambda w: w.t(),  # lowrank's factors are transposed views
        lambda w: w.reshape(8, 3, 3, 5).contiguous(memory_format=torch.channels_last),
        lambda w: w.reshape(2, 3, 4, 15).permute(3, 1, 0, 2)[:, :, :1],  # a size-1 dimension, stride 180
    ],
    ids=["transposed", "channels_last", "permuted"],
)
def test_codec_restores_the_strides_of_dense_layouts(layout) -> None:
    torch.manual_seed(0)
    weight = layout(torch.randn(24, 15) * (torch.rand(24, 15) < 0.3))
    decoded = decode_tensor(*encode_tensor(weight, index_bits=3)[:2])
    assert decoded.stride() == weight.stride() and torch.equal(_bits(decoded), _bits(weight))


def test_codec_stores_a_view_that_is_not_dense_in_the_dense_layout_of_its_order() -> None:
    weight = torch.randn(6, 10).t()[::2]  # (5, 6), strides (2, 10): every other column
    decoded = decode_tensor(*encode_tensor(weight, index_bits=3)[:2])
    assert decoded.stride() == (1, 5) and torch.equal(_bits(decoded), _bits(weight))


def test_deep_save_of_a_lowrank_model_loads_with_its_strides_and_computes_bitwise(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 24)
    model = nn.Sequential(nn.Linear(24, 20), nn.ReLU(), nn.Linear(20, 7))
    result = fxcomp.compress(model, x, {"passes": [{"pass": "lowrank", "rank": 2}]})
    fxcomp.save(result.model, tmp_path / "lowrank.fxc", codec="deep")
    loaded = fxcomp.load(tmp_path / "lowrank.fxc")
    saved = result.model.state_dict()
    assert not all(t.is_contiguous() for t in saved.values())
    for name, tensor in loaded.state_dict().items():
        assert tensor.stride() == saved[name].stride() and torch.equal(tensor, saved[name])
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


@pytest.mark.parametrize(
    "stride",
    [[1, 1], [5, 1, 1], [10, 1], [1, 0], [-5, 1], [5.0, 1], [1 << 63, 1], "5,1"],
    ids=["overlapping", "too_many", "sparse", "zero", "negative", "float", "huge", "string"],
)
def test_crafted_strides_are_refused(stride, sparse_shared, tmp_path) -> None:
    meta, payload, _ = encode_tensor(torch.randn(4, 5), index_bits=3)
    with pytest.raises(CodecError, match="strides"):
        decode_tensor({**meta, "stride": stride}, payload)
    result, _ = sparse_shared
    path = tmp_path / "deep.fxc"
    fxcomp.save(result.model, path, codec="deep")
    data = torch.load(path, weights_only=True)
    graph = json.loads(data["graph"])
    next(iter(graph["encoded"].values()))["stride"] = stride
    torch.save({**data, "graph": json.dumps(graph)}, path)
    with pytest.raises(LoadError, match=r"malformed \(coded weight 't\d+': strides"):
        fxcomp.load(path)


@pytest.mark.parametrize("part_type", [["uint8"], {"uint8": 1}, "float32"])
def test_crafted_part_types_are_refused(part_type, sparse_shared, tmp_path) -> None:
    result, _ = sparse_shared
    path = tmp_path / "deep.fxc"
    fxcomp.save(result.model, path, codec="deep")
    data = torch.load(path, weights_only=True)
    graph = json.loads(data["graph"])
    next(iter(next(iter(graph["encoded"].values()))["parts"].values()))[2] = part_type  # raw TypeError before
    torch.save({**data, "graph": json.dumps(graph)}, path)
    with pytest.raises(LoadError, match=r"malformed \(coded part\)"):
        fxcomp.load(path)


def test_an_all_zero_weight_round_trips_through_the_codec(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # global sparsify empties this small-magnitude layer
    x = torch.randn(2, 64)
    recipe = {"passes": [{"pass": "sparsify", "sparsity": 0.9, "scope": "global"}], "save": {"codec": "deep"}}
    result = fxcomp.compress(model, x, recipe)
    assert fxcomp.sparsity(result.model)["2.weight"] == 1.0
    report = result.save(tmp_path / "zero.fxc")
    assert {layer.name: layer.nonzero for layer in report.layers}["2.weight"] == 0
    loaded = fxcomp.load(tmp_path / "zero.fxc")
    expected = fxcomp.strip_masks(result.model).state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(_bits(tensor), _bits(expected[name]))
    assert torch.equal(loaded(x), result.model(x))


def test_index_bits_takes_whole_numbers_only(tmp_path) -> None:
    gm = fxcomp.trace(nn.Sequential(nn.Linear(4, 3)), torch.randn(1, 4))
    report = fxcomp.save(gm, tmp_path / "m.fxc", codec="deep", index_bits=np.int64(4))
    assert [layer.index_bits for layer in report.layers] == [4] and type(report.layers[0].index_bits) is int
    assert torch.equal(fxcomp.load(tmp_path / "m.fxc").get_submodule("0").weight, gm.get_submodule("0").weight)
    for bits in (4.0, "4", True):
        with pytest.raises(SaveError, match=rf"^index_bits must be between 1 and 16 \(a whole number\), got {re.escape(repr(bits))}$"):
            fxcomp.save(gm, tmp_path / "m.fxc", codec="deep", index_bits=bits)
