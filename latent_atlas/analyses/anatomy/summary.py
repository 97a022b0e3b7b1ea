"""Model summary from the config alone: fields, parameters per module, the architecture diagram.

``parameter_tree(config)`` builds the model on PyTorch's ``meta`` device
(``with torch.device("meta")``: shapes, no storage), so it works for a model
far too large to load. (``accelerate.init_empty_weights`` leaves GPT-2's
``lm_head`` untied in transformers 5, counting the embedding twice; the
device context ties it like a real load.) Invariants:

* the root's ``count`` equals ``sum(p.numel() for p in model.parameters())``
  of the loaded model (tied weights counted once, like ``parameters()``);
* every node's ``count`` is the sum of its children's plus its own direct
  parameters; ``share`` is ``count / root count``;
* leaves carry their parameters' shapes (``params``: name -> shape), so hover
  text can show them;
* ``diagram(tree, config)`` lists the drawn parts in order: ``embedding``,
  one ``block`` per layer (attention and MLP counts, head counts), ``final_norm``
  and ``unembedding``, each with its parameter count; nothing here touches
  weights.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from latent_atlas.lm.adapters import ADAPTERS, ArchitectureAdapter
from latent_atlas.lm.memory import meta_model

__all__ = ["config_fields", "diagram", "meta_model", "parameter_tree", "tree_node"]

# (label, config attribute names tried in order)
_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("layers", ("num_hidden_layers", "n_layer")),
    ("attention heads", ("num_attention_heads", "n_head")),
    ("key/value heads", ("num_key_value_heads",)),
    ("head dimension", ("head_dim",)),
    ("hidden size", ("hidden_size", "n_embd")),
    ("MLP size", ("intermediate_size", "n_inner")),
    ("vocabulary", ("vocab_size",)),
    ("context length", ("max_position_embeddings", "n_positions")),
    ("activation", ("hidden_act", "activation_function")),
    ("tied embeddings", ("tie_word_embeddings",)),
    ("rope theta", ("rope_theta",)),
)


def _first_attr(config: PretrainedConfig, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def config_fields(config: PretrainedConfig) -> dict[str, Any]:
    """The config fields a researcher expects, JSON-safe (absent ones are left out)."""
    out: dict[str, Any] = {"architecture": (config.architectures or [type(config).__name__])[0],
                           "model type": config.model_type}
    for label, names in _FIELDS:
        value = _first_attr(config, names)
        if value is not None and isinstance(value, str | int | float | bool):
            out[label] = value
    hidden = out.get("hidden size")
    heads = out.get("attention heads")
    if "head dimension" not in out and isinstance(hidden, int) and isinstance(heads, int) and heads:
        out["head dimension"] = hidden // heads
    if "key/value heads" not in out and heads is not None:
        out["key/value heads"] = heads
    if "MLP size" not in out and isinstance(hidden, int) and config.model_type == "gpt2":
        out["MLP size"] = 4 * hidden  # GPT-2's n_inner None means 4 x hidden
    family = config.model_type
    out["positional scheme"] = "learned absolute" if family == "gpt2" else (
        "rotary" if hasattr(config, "rope_theta") or hasattr(config, "rope_parameters") else "unknown")
    out["norm"] = "LayerNorm" if family == "gpt2" else "RMSNorm"
    eps = _first_attr(config, ("rms_norm_eps", "layer_norm_epsilon"))
    if eps is not None:
        out["norm eps"] = float(eps)
    return out


def tree_node(name: str) -> dict[str, Any]:
    return {"name": name, "count": 0, "params": {}, "children": []}


def parameter_tree(config: PretrainedConfig) -> dict[str, Any]:
    """Parameters per module as a nested tree (see the module docstring); no weights are made."""
    model = meta_model(config)
    root = tree_node(type(model).__name__)
    index: dict[str, dict[str, Any]] = {"": root}
    for full_name, param in model.named_parameters():  # tied parameters appear once
        parts = full_name.split(".")
        path = ""
        node = root
        for part in parts[:-1]:
            path = f"{path}.{part}" if path else part
            child = index.get(path)
            if child is None:
                child = tree_node(part)
                node["children"].append(child)
                index[path] = child
            node = child
        node["params"][parts[-1]] = list(param.shape)
        count = int(param.numel())
        path = ""
        root["count"] += count
        for part in parts[:-1]:
            path = f"{path}.{part}" if path else part
            index[path]["count"] += count
    total = max(root["count"], 1)

    def finish(node: dict[str, Any]) -> None:
        node["share"] = node["count"] / total
        for child in node["children"]:
            finish(child)

    finish(root)
    return root


def _find(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = tree
    for part in path.split("."):
        if node is None:
            return None
        node = next((c for c in node["children"] if c["name"] == part), None)
    return node


def _shapes(node: dict[str, Any] | None, prefix: str = "") -> dict[str, list[int]]:
    if node is None:
        return {}
    out = {f"{prefix}{k}": v for k, v in node["params"].items()}
    for child in node["children"]:
        out.update(_shapes(child, f"{prefix}{child['name']}."))
    return out


def _part(kind: str, label: str, node: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "label": label, "count": 0 if node is None else int(node["count"]),
            "shapes": _shapes(node), **extra}


def diagram(tree: dict[str, Any], config: PretrainedConfig,
            adapter: ArchitectureAdapter | None = None) -> list[dict[str, Any]]:
    """The parts of the 3D architecture diagram, in order (see the module docstring)."""
    adapter = adapter or ADAPTERS.get(config.model_type)
    if adapter is None:
        raise ValueError(f"no architecture adapter for model type {config.model_type!r}")
    fields = config_fields(config)
    heads = int(fields.get("attention heads") or 0)
    kv_heads = int(fields.get("key/value heads") or heads)
    parts = [_part("embedding", "token embedding", _find(tree, adapter.token_embedding))]
    if adapter.position_embedding is not None:
        parts.append(_part("embedding", "position embedding", _find(tree, adapter.position_embedding)))
    blocks = _find(tree, adapter.blocks)
    for layer, block in enumerate(blocks["children"] if blocks else []):
        attn = _find(block, adapter.attention)
        mlp = _find(block, adapter.mlp)
        parts.append(_part("block", f"block {layer}", block, layer=layer, heads=heads, kv_heads=kv_heads,
                           attention=0 if attn is None else int(attn["count"]),
                           mlp=0 if mlp is None else int(mlp["count"])))
    parts.append(_part("final_norm", "final norm", _find(tree, adapter.final_norm)))
    unembed = _find(tree, adapter.unembedding)
    tied = unembed is None or unembed["count"] == 0
    parts.append(_part("unembedding", "unembedding" + (" (tied to the embedding)" if tied else ""),
                       unembed, tied=tied))
    return parts
