"""edgekit.prune on small networks: what each kind removes, and the bad inputs it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.errors import PlanError
from edgekit.prune import PruneError, PruneSpec, compressed_bytes, finalize, nonzero_count, prune, two_four_mask


class Net(nn.Module):
    """Conv -> BN -> residual block -> linear head: what the dependency graph has to follow."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(self.dw(x).mean((2, 3)))


class Scaled(nn.Module):
    """A custom layer with its own parameter: its channels are invisible to the dependency graph."""

    def __init__(self, n):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, n, 1, 1))

    def forward(self, x):
        return x * self.gamma


def net():
    torch.manual_seed(0)
    return Net().eval()


EXAMPLE = (torch.randn(1, 3, 8, 8),)


@pytest.mark.parametrize("text,kind,ratio", [("structured:0.5", "structured", 0.5), ("unstructured:0.8", "unstructured", 0.8),
                                             ("2:4", "2:4", 0.5), (" structured:0.3 ", "structured", 0.3)])
def test_parse(text, kind, ratio):
    spec = PruneSpec.parse(text)
    assert (spec.kind, spec.ratio) == (kind, ratio)
    assert PruneSpec(**spec.model_dump()) == spec  # round trip (the plan stores it as a dict)


@pytest.mark.parametrize("text,says", [("structured:0", "strictly between 0 and 1"), ("structured:1", "strictly between"),
                                       ("unstructured:1.5", "strictly between"), ("structured:-0.2", "strictly between"),
                                       ("structured:nan", "strictly between"), ("structured:x", "not a number"),
                                       ("channels:0.5", "structured:RATIO"), ("structured", "structured:RATIO"),
                                       ("3:4", "2:4")])
def test_parse_refuses(text, says):
    with pytest.raises(PlanError, match=says):
        PruneSpec.parse(text)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_structured_removes_the_ratio_of_parameters_and_keeps_the_outputs(ratio):
    model = net()
    before = sum(p.numel() for p in model.parameters())
    reference = model(*EXAMPLE)
    pruned, rec = prune(model, EXAMPLE, PruneSpec.parse(f"structured:{ratio}"))
    after = sum(p.numel() for p in pruned.parameters())
    assert rec["parameters_before"] == before and rec["parameters_after"] == after
    assert ratio <= 1 - after / before < ratio + 0.1  # the bisection's first channel ratio that reaches the target
    assert pruned(*EXAMPLE).shape == (1, 10)
    assert pruned.head.out_features == 10  # the output layer keeps its classes
    widths = {n: layer["channels_after"] for n, layer in rec["layers"].items()}
    assert all(w % rec["channel_multiple"] == 0 for n, w in widths.items() if n != "head")
    assert widths["stem.0"] == pruned.stem[0].out_channels < 16
    assert pruned.block[0].out_channels == pruned.stem[0].out_channels == pruned.dw.in_channels  # residual kept whole
    assert torch.equal(model(*EXAMPLE), reference) and sum(p.numel() for p in model.parameters()) == before


def test_structured_taylor_uses_the_gradients():
    calls = []

    def gradients(m):
        calls.append(1)
        m(torch.randn(4, 3, 8, 8)).sum().backward()

    pruned, rec = prune(net(), EXAMPLE, PruneSpec.parse("structured:0.5", importance="taylor"), gradients)
    assert calls and rec["importance"] == "taylor"
    assert all(p.grad is None for p in pruned.parameters())
    with pytest.raises(PruneError, match="Taylor importance needs train data"):
        prune(net(), EXAMPLE, PruneSpec.parse("structured:0.5", importance="taylor"))


def test_structured_refuses_a_layer_it_cannot_follow_by_name():
    model = net()
    model.stem.append(Scaled(16))
    with pytest.raises(PruneError, match=r"layer 'stem\.3' \(Scaled\): it holds its own parameters \(gamma\)"):
        prune(model, EXAMPLE, PruneSpec.parse("structured:0.5"))


def test_structured_refuses_to_empty_a_layer():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 10)).eval()
    with pytest.raises(PruneError, match=r"would remove every channel of layer '0' \(2 channels\)"):
        prune(model, EXAMPLE, PruneSpec.parse("structured:0.9"))


def test_unstructured_zeroes_the_ratio_of_each_layer_and_keeps_zeros_after_finalize():
    pruned, rec = prune(net(), EXAMPLE, PruneSpec.parse("unstructured:0.8"))
    assert rec["parameters_after"] == rec["parameters_before"]
    for name, layer in rec["layers"].items():
        assert layer["sparsity"] == pytest.approx(0.8, abs=0.02), name
    finalize(pruned)
    assert not any(n.endswith("_orig") for n, _ in pruned.named_parameters())
    w = pruned.block[0].weight
    assert (w == 0).float().mean().item() == pytest.approx(0.8, abs=0.01)
    assert nonzero_count(pruned) == rec["nonzero_after"] < rec["parameters_before"] * 0.3


def test_unstructured_refuses_to_empty_a_layer():
    model = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False), nn.Flatten(), nn.Linear(64, 10)).eval()  # 3 weights
    with pytest.raises(PruneError, match="would remove every weight of layer '0'"):
        prune(model, EXAMPLE, PruneSpec.parse("unstructured:0.9"))


def test_two_four_keeps_the_two_largest_of_every_four_input_channels():
    torch.manual_seed(1)
    w = torch.randn(8, 16, 3, 3)
    mask = two_four_mask(w)
    groups = mask.movedim(1, -1).reshape(-1, 4)
    assert torch.equal(groups.sum(1), torch.full((groups.shape[0],), 2.0))
    kept = (w.abs() * mask).movedim(1, -1).reshape(-1, 4)
    dropped = (w.abs() * (1 - mask)).movedim(1, -1).reshape(-1, 4)
    assert bool((kept.max(1).values >= dropped.max(1).values).all())
    pruned, rec = prune(net(), EXAMPLE, PruneSpec.parse("2:4"))
    assert "block.0" in rec["layers_2of4"] and "head" in rec["layers_2of4"]
    assert any(d.startswith("stem.0 (3 input channels") for d in rec["layers_dense"])
    assert any(d.startswith("dw (1 input channels") for d in rec["layers_dense"])
    finalize(pruned)
    assert (pruned.head.weight == 0).float().mean().item() == 0.5


def test_compressed_bytes_deflates(tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(bytes(100_000) + torch.randn(1000).numpy().tobytes())
    assert 3000 < compressed_bytes(f) < 10_000


def test_a_decoder_loses_neurons_and_query_heads_and_stays_a_llama_transformers_reads(tmp_path):
    from transformers import LlamaForCausalLM

    from edgekit.lm.model import Decoder, DecoderConfig, load_folder, save_folder
    from edgekit.lm.prune import prune_decoder

    torch.manual_seed(0)
    model = Decoder(DecoderConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                  num_key_value_heads=2, intermediate_size=40, max_position_embeddings=32)).eval()
    pruned, rec = prune_decoder(model, PruneSpec.parse("structured:0.5"))
    c = pruned.config
    assert (c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (20, 4, 2, 8)
    assert rec["query_heads"] == {"before": 6, "after": 4} and rec["mlp_neurons"] == {"before": 40, "after": 20}
    assert rec["parameters_after"] < rec["parameters_before"]
    # the kept neurons and heads are the largest: pruning 1% keeps everything, so the logits are unchanged
    same, _ = prune_decoder(model, PruneSpec.parse("structured:0.01"))
    tokens = torch.randint(0, 64, (2, 16))
    assert torch.allclose(same(tokens), model(tokens), atol=1e-5)
    # an explicit head_dim (48 / 4 heads would be 12): transformers' LlamaForCausalLM computes the same logits
    save_folder(pruned, tmp_path)
    assert load_folder(tmp_path).config == c
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(hf(tokens).logits, pruned(tokens), atol=1e-4)
    zeroed, rec = prune_decoder(model, PruneSpec.parse("2:4"))  # the decoder layers only; the embedding stays dense
    finalize(zeroed)
    assert (zeroed.model.layers[0].mlp.down_proj.weight == 0).float().mean().item() == 0.5
    assert not (zeroed.model.embed_tokens.weight == 0).any()
    assert nonzero_count(zeroed) == sum(p.numel() for p in model.parameters()) - sum(
        m.weight.numel() // 2 for m in zeroed.model.layers.modules() if isinstance(m, nn.Linear))


def test_structured_to_a_latency_target_bisects_on_the_measurement():
    """The measurement is the caller's (the build exports and times each candidate); here a stand-in that is
    proportional to the multiply-adds of the convolutions, so the bisection's answer can be checked."""
    calls = []

    def latency(m):
        calls.append(1)
        return float(sum(layer.weight.numel() for layer in m.modules() if isinstance(layer, nn.Conv2d)))

    spec = PruneSpec.parse("structured:latency=0.4")
    assert (spec.target, spec.ratio, spec.label) == ("latency", 0.4, "structured:latency=0.4")
    pruned, rec = prune(net(), EXAMPLE, spec, latency=latency)
    assert rec["latency_ms_after"] <= 0.6 * rec["latency_ms_before"]
    assert rec["latency_ms_after"] == latency(pruned)
    # 16-channel layers have no multiple of 16 to narrow to, and a latency target tries 16 or 1 (each try costs
    # 9 measurements): the dense model, the ceiling, 8 bisection steps (+ the call above)
    assert rec["channel_multiple"] == 1
    assert len(calls) == 1 + 1 + 8 + 1
    with pytest.raises(PruneError, match="needs a runtime to measure latency"):
        prune(net(), EXAMPLE, spec)


def test_the_planner_refuses_what_pruning_cannot_do_here():
    from edgekit.plan import make_plan
    from edgekit.profiles import load_profile

    with pytest.raises(PlanError, match="measures the latency of each candidate"):
        make_plan(load_profile("iphone-15-pro"), prune="structured:latency=0.3")  # Core ML cannot run here
    with pytest.raises(PlanError, match="QAT retrains every weight"):
        make_plan(load_profile("pixel8"), quant="int8-qat", prune="2:4")
    with pytest.raises(PlanError, match="for classifiers and language models"):
        make_plan(load_profile("pixel8"), task="embedding", prune="structured:0.5")
    plan = make_plan(load_profile("pixel8"), quant="int8", distill=True, prune="structured:0.5", prune_epochs=0)
    assert plan.stages[:4] == ("load", "distill", "prune", "export")
    assert plan.prune["epochs"] == 0 and dict(plan.describe())["pruning"].endswith("no recovery")


def test_structured_refuses_a_second_output_head_it_would_narrow():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux, self.head = nn.Linear(8, 32), nn.Linear(32, 4), nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.aux(h), self.head(h)

    with pytest.raises(PruneError, match=r"changed the model's output shapes from \[\(1, 4\), \(1, 10\)\]"):
        prune(TwoHeads().eval(), (torch.randn(1, 8),), PruneSpec.parse("structured:0.3"))
