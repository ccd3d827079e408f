"""Model profiles: the few shape numbers a roofline model needs, not the weights.

Built-ins cover a small dense model, a large dense model that needs tensor parallelism, an MoE
model whose decode reads few experts at small batch, and the CPU numpy engine of the serving side.
A services file names one of these (`config.services.MODEL_PROFILES`); `load_profiles` reads
YAML entries (``profiles: [...]``) that add to or replace them for the perf model's own use.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from heteroscale_ray.config.loader import load_yaml, parse_model

GB = 1e9  # the catalog's GB and TB/s are decimal: 1 GB = 1e9 bytes


class ModelProfile(BaseModel):
    """Shape of one served model as the performance model sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        description="Profile key used by services and the simulator, e.g. 'dense-8b'."
    )
    params_b: float = Field(gt=0, description="Total parameters, billions (all experts of an MoE).")
    active_params_b: float = Field(
        gt=0,
        description="Parameters one token passes through, billions (= params_b for dense models).",
    )
    n_layers: int = Field(gt=0, description="Transformer layers.")
    hidden_size: int = Field(gt=0, description="Residual stream width (d_model).")
    n_kv_heads: int = Field(
        gt=0, description="Key/value heads (GQA groups); sets the KV-cache size."
    )
    head_dim: int = Field(gt=0, description="Width of one attention head.")
    n_heads: int | None = Field(
        default=None,
        gt=0,
        description="Query heads; sets attention FLOPs. Default hidden_size // head_dim.",
    )
    n_experts: int | None = Field(
        default=None, gt=1, description="Routed experts per MoE layer; None for a dense model."
    )
    experts_per_token: int | None = Field(
        default=None, gt=0, description="Routed experts each token uses (top-k); None for dense."
    )
    bytes_per_param: float = Field(
        default=2, gt=0, description="Weight bytes per parameter (2 = BF16)."
    )
    kv_dtype_bytes: float = Field(
        default=2, gt=0, description="Bytes per KV-cache element (2 = BF16)."
    )
    source: str = Field(default="", description="Where the shape numbers come from.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelProfile:
        if self.active_params_b > self.params_b:
            raise ValueError(
                f"active_params_b {self.active_params_b} exceeds params_b {self.params_b}: "
                "active parameters are a subset of the total"
            )
        if (self.n_experts is None) != (self.experts_per_token is None):
            raise ValueError("set both n_experts and experts_per_token (MoE) or neither (dense)")
        if self.n_experts is not None and self.experts_per_token is not None:
            if self.experts_per_token >= self.n_experts:
                raise ValueError("experts_per_token must be below n_experts")
            if self.active_params_b >= self.params_b:
                raise ValueError("an MoE profile needs active_params_b < params_b")
        return self

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V for every layer: 2 * n_layers * n_kv_heads * head_dim * kv_dtype_bytes.

        Derived, never stored, so a dumped profile validates back under extra="forbid".
        """
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def attn_dim(self) -> int:
        """Query width n_heads * head_dim; differs from hidden_size in some models (Qwen3 MoE)."""
        heads = self.n_heads if self.n_heads is not None else self.hidden_size // self.head_dim
        return heads * self.head_dim

    @property
    def weight_bytes(self) -> float:
        return self.params_b * GB * self.bytes_per_param


# Public configs (Hugging Face config.json / model cards), numbers copied by hand:
BUILTIN_PROFILES: tuple[ModelProfile, ...] = (
    # meta-llama/Meta-Llama-3-8B: 32 layers, hidden 4096, 32 heads, 8 KV heads x 128,
    # 8,030,261,248 parameters.
    ModelProfile(
        name="dense-8b",
        params_b=8.03,
        active_params_b=8.03,
        n_layers=32,
        hidden_size=4096,
        n_kv_heads=8,
        head_dim=128,
        source="meta-llama/Meta-Llama-3-8B config.json",
    ),
    # meta-llama/Meta-Llama-3-70B: 80 layers, hidden 8192, 64 heads, 8 KV heads x 128,
    # 70,562,938,880 parameters.
    ModelProfile(
        name="dense-70b",
        params_b=70.56,
        active_params_b=70.56,
        n_layers=80,
        hidden_size=8192,
        n_kv_heads=8,
        head_dim=128,
        source="meta-llama/Meta-Llama-3-70B config.json",
    ),
    # Qwen/Qwen3-30B-A3B: 48 layers, hidden 2048, 32 query heads and 4 KV heads x 128,
    # 128 experts with top-8 routing; model card: 30.5B total, 3.3B activated.
    ModelProfile(
        name="moe-a3b",
        params_b=30.5,
        active_params_b=3.3,
        n_layers=48,
        hidden_size=2048,
        n_kv_heads=4,
        head_dim=128,
        n_heads=32,
        n_experts=128,
        experts_per_token=8,
        source="Qwen/Qwen3-30B-A3B config.json and model card",
    ),
    # heteroscale_ray.serving.model.ModelConfig defaults: 4 layers, d_model 256, 8 heads of 32,
    # d_ff 1024, vocab 259, float32. params = embed 259*256 + 4*(4*256^2 + 2*256*1024)
    # + lm_head 256*259 + norms 9*256 = 3,280,640; active = the matmul weights the engine's
    # TinyTransformer.flops counts (3,212,032), so FLOP numbers agree with the engine's.
    ModelProfile(
        name="tiny-cpu",
        params_b=3_280_640 / 1e9,
        active_params_b=3_212_032 / 1e9,
        n_layers=4,
        hidden_size=256,
        n_kv_heads=8,
        head_dim=32,
        bytes_per_param=4,
        kv_dtype_bytes=4,
        source="heteroscale_ray.serving.model.ModelConfig defaults",
    ),
)


class ProfileSet(BaseModel):
    """A YAML file of extra or replacement profiles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: list[ModelProfile] = Field(description="Model profiles; a built-in name replaces it.")


def builtin_profiles() -> dict[str, ModelProfile]:
    return {p.name: p for p in BUILTIN_PROFILES}


def profiles_from_dict(data: object, source: str = "<profiles>") -> dict[str, ModelProfile]:
    """Built-ins merged with ``{"profiles": [...]}``; errors name the field and the fix."""
    extra = parse_model(ProfileSet, data, source)
    merged = builtin_profiles()
    merged.update({p.name: p for p in extra.profiles})
    return merged


def load_profiles(path: str | Path) -> dict[str, ModelProfile]:
    """Built-ins merged with the profiles of a YAML file."""
    extra = load_yaml(path, ProfileSet)
    merged = builtin_profiles()
    merged.update({p.name: p for p in extra.profiles})
    return merged


def get_profile(name: str, profiles: dict[str, ModelProfile] | None = None) -> ModelProfile:
    table = builtin_profiles() if profiles is None else profiles
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise KeyError(f"unknown model profile {name!r}; known profiles: {known}") from None
