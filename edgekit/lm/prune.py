"""Structured pruning of a Llama-architecture decoder: MLP neurons and attention heads, then KD recovery.

``--prune structured:R`` on a language model removes, in every layer, the fraction ``R`` of the SwiGLU MLP's
inner neurons (a row of ``gate_proj`` and ``up_proj`` and the matching column of ``down_proj``; rounded to a
multiple of 32 when the width was one, so int4 groups of 32 still fit) and of the query
heads of each grouped-query group (rows of ``q_proj``, columns of ``o_proj``; at least one query head per group
stays, and the key/value heads, hence the KV cache, are kept). Every layer keeps the same widths, so the result is
again a plain Llama configuration (``intermediate_size``, ``num_attention_heads``, an explicit ``head_dim``) that
every exporter and transformers read. Importance: the L2 norm of each neuron's / head's weights (magnitude).

``unstructured:R`` and ``2:4`` zero weights of the decoder layers' linear layers (not the embedding, which the
output layer shares) with :mod:`edgekit.prune`'s masks, kept through recovery; the shapes stay, so only the
deflated size can shrink.

The structured part is hand-written rather than torch-pruning's dependency graph: the graph cannot see through the reshape of the
projections into heads or the grouped-query repeat, and the layer widths must stay uniform to remain a Llama
config. Recovery is token-level Hinton KD from the unpruned decoder (:func:`edgekit.lm.distill.train`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from edgekit.prune import PruneError, PruneSpec, finalize, nonzero_count, parameter_count


ALIGN = 32  # the MLP keeps a multiple of this many neurons when it had one (int4 group size 32)


def _keep(scores: Any, n: int) -> Any:
    return scores.topk(n).indices.sort().values


def prune_decoder(model: Any, spec: PruneSpec) -> tuple[Any, dict[str, Any]]:
    """A pruned copy of ``model`` (:class:`edgekit.lm.model.Decoder`) and the record of what was removed."""
    import torch

    from edgekit.lm.model import Decoder

    if spec.kind != "structured":
        return _zeros(model, spec)
    c = model.config
    group = c.num_attention_heads // c.num_key_value_heads
    align = ALIGN if c.intermediate_size % ALIGN == 0 else 1  # keep int4 groups (and kernel tiles) whole
    neurons = round(c.intermediate_size * (1 - spec.ratio) / align) * align
    per_group = max(1, round(group * (1 - spec.ratio)))
    if neurons < 1:
        raise PruneError(f"structured:{spec.ratio:g} would remove every MLP neuron ({c.intermediate_size} per layer)")
    config = dataclasses.replace(c, intermediate_size=neurons, num_attention_heads=per_group * c.num_key_value_heads,
                                 head_dim=c.head_dim)
    pruned = Decoder(config).eval()
    d = c.head_dim
    with torch.no_grad():
        src, dst = model.state_dict(), pruned.state_dict()
        for key in dst:
            if "layers." not in key:
                dst[key].copy_(src[key])
        for i, (old, new) in enumerate(zip(model.model.layers, pruned.model.layers)):
            mlp = old.mlp
            score = mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1) * mlp.down_proj.weight.norm(dim=0)
            idx = _keep(score, neurons)
            new.mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[idx])
            new.mlp.up_proj.weight.copy_(mlp.up_proj.weight[idx])
            new.mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, idx])
            att = old.self_attn
            q = att.q_proj.weight.view(c.num_attention_heads, d, -1)
            o = att.o_proj.weight.view(-1, c.num_attention_heads, d)
            head_score = q.flatten(1).norm(dim=1) * o.transpose(0, 1).flatten(1).norm(dim=1)
            heads = torch.cat([g * group + _keep(head_score[g * group:(g + 1) * group], per_group)
                               for g in range(c.num_key_value_heads)])
            new.self_attn.q_proj.weight.copy_(q[heads].reshape(-1, c.hidden_size))
            new.self_attn.o_proj.weight.copy_(o[:, heads].reshape(c.hidden_size, -1))
            for name in ("k_proj", "v_proj"):
                getattr(new.self_attn, name).weight.copy_(getattr(att, name).weight)
            for name in ("input_layernorm", "post_attention_layernorm"):
                getattr(new, name).weight.copy_(getattr(old, name).weight)
    record = {**spec.model_dump(), "label": spec.label, "parameters_before": parameter_count(model),
              "parameters_after": parameter_count(pruned), "nonzero_after": parameter_count(pruned),
              "mlp_neurons": {"before": c.intermediate_size, "after": neurons},
              "query_heads": {"before": c.num_attention_heads, "after": config.num_attention_heads},
              "key_value_heads": c.num_key_value_heads, "head_dim": d}
    return pruned, record


def _zeros(model: Any, spec: PruneSpec) -> tuple[Any, dict[str, Any]]:
    """Unstructured / 2:4 on the decoder layers' linear weights (the embedding, tied to the output layer, stays
    dense); the masks stay in place for recovery until :func:`edgekit.prune.finalize`."""
    from edgekit.prune import zero_two_four, zero_unstructured

    pruned = copy.deepcopy(model).eval()
    layers = zero_unstructured(pruned.model.layers, spec) if spec.kind == "unstructured" else zero_two_four(pruned.model.layers)
    return pruned, {**spec.model_dump(), "label": spec.label, "parameters_before": parameter_count(model),
                    "parameters_after": parameter_count(pruned), "nonzero_after": nonzero_count(pruned),
                    "layers_pruned": "decoder layers' linear weights (embedding and output layer dense)", **layers}


def prune_for_build(model: Any, windows: dict[str, Any], spec: PruneSpec, temperature: float, alpha: float,
                    batch_size: int, seed: int, say: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The language-model build's prune stage: prune, recover with ``spec.epochs`` of token-level KD from the
    unpruned decoder (its top-64 logits; the best epoch by calib perplexity). Perplexities are on eval."""
    from edgekit.lm.distill import perplexity, train

    say(f"{spec.label}: MLP neurons and query heads by weight magnitude")
    pruned, record = prune_decoder(model, spec)
    record["perplexity_dense"] = perplexity(model, windows["eval"])
    record["perplexity_pruned"] = perplexity(pruned, windows["eval"])
    record["recovery"] = None
    if spec.epochs:
        teacher = copy.deepcopy(model).eval()
        pruned, rep = train(pruned, windows, epochs=spec.epochs, lr=spec.lr, batch_size=batch_size, seed=seed,
                            teacher=teacher, temperature=temperature, alpha=alpha, say=lambda msg: say(f"KD recovery {msg}"))
        record["recovery"] = {"method": "hinton-kd", "teacher": "the unpruned model", "temperature": temperature,
                              "alpha": alpha, "epochs": spec.epochs, "lr": spec.lr, "best_epoch": rep["best_epoch"],
                              "best_epoch_chosen_on": "calib", "seconds": rep["seconds"]}
    finalize(pruned)
    record["nonzero_after"] = nonzero_count(pruned)
    record["perplexity_after"] = perplexity(pruned.eval(), windows["eval"])
    record["perplexity_measured_on"] = "eval"
    return pruned, record
