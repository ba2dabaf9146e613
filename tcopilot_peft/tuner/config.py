"""`CopilotConfig`: the PEFT configuration of a Transformer Copilot adapter."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from aenum import extend_enum
from peft import PeftConfig
from peft.utils import PeftType

from ..fusion import DEFAULT_OBJECTIVE, FUSION_MODES, INFERENCE_FEEDS, OBJECTIVES
from ..mistake_log import DEFAULT_TOP_K
from .checkpoint import check_adapter_weights


# PEFT's `register_peft_method` only accepts names that are members of `PeftType`, and its save path checks enum
# membership too, so the enum is extended once per process (importing this module twice is a no-op).
if "COPILOT" not in PeftType.__members__:
    extend_enum(PeftType, "COPILOT", "COPILOT")

COPILOT_INITS = ("pilot_layers", "pretrained", "random")
# `copilot_positions`: the paper's position-free Copilot, or rotary positions as the source family's layers use.
COPILOT_POSITIONS = ("none", "rotary")
# `copilot_same_position`: what the Copilot's input at t holds besides the feed (the error or its own output).
SAME_POSITION_PATHS = ("none", "token", "hidden", "token_hidden")
# The Copilot's layout fields, left unset for the Pilot family's default (`families.PilotFamily.copilot_defaults`).
LAYOUT_FIELDS = {"copilot_positions": COPILOT_POSITIONS, "copilot_same_position": SAME_POSITION_PATHS}
# The fields whose unset value means "the objective's own" (`Objective.fusion_mode`, `Objective.inference_feed`).
OBJECTIVE_FIELDS = ("fusion_mode", "inference_feed")
# `copilot_loss`'s help, one clause per registered objective (`fusion.OBJECTIVES`).
OBJECTIVE_HELP = "Copilot objective: " + "; ".join(f"'{o.name}' {o.help}" for o in OBJECTIVES.values()) + "."


@dataclass
class CopilotConfig(PeftConfig):
    """
    Configuration of a Transformer Copilot adapter (Zou et al., NeurIPS 2025).

    The Copilot is a small decoder of the Pilot's own family that reads the Pilot's token-level errors and predicts
    the next one; its prediction is fused into the Pilot's next-token logits.

    Args:
        copilot_loss (`str`, *optional*, defaults to `"fused_ce"`):
            How the Copilot is trained, which also sets the defaults of `fusion_mode` and `inference_feed`.
            `"fused_ce"`: the cross-entropy of the logit-fused prediction softmax(log p̂ + f) on the gold token (logit
            fusion, the `"pilot_error"` feed). `"rmse"`: **the paper's objective**, regression of f onto
            ℓ = onehot(y) − p̂ by the per-token L2 norm (Eq. 7), with probability-space fusion (Eq. 8) and Algorithm 2's
            feed. `"mse"`: the squared norm, otherwise as `"rmse"`. `CopilotSFTConfig.copilot_loss` may override it
            for one training run. An adapter saved before this field existed was trained with `"rmse"` and loads so.
        num_layers (`int`, *optional*):
            Copilot depth. Odd layers (1-based) use causal self-attention, even layers cross-attend to the Pilot's
            input embeddings and layer-pooled hidden states. Defaults to a quarter of the Pilot's layers, at least 2.
        init (`str`, defaults to `"pilot_layers"`):
            How the Copilot's blocks are initialised: `"pilot_layers"` copies evenly spaced decoder layers of the
            Pilot, `"pretrained"` copies the decoder layers of `pretrained_model_name_or_path` (a smaller model of
            the same family), `"random"` uses the Pilot's initialiser.
        pretrained_model_name_or_path (`str`, *optional*):
            The smaller pretrained decoder used when `init="pretrained"`.
        init_layers (`list[int]`, *optional*):
            Which source layers (0-based) initialise the Copilot's blocks; defaults to evenly spaced layers.
        fusion_lambda (`float`, defaults to 1.0):
            Correction strength λ. `0` reproduces the Pilot exactly. Can be changed on the active config at any time.
        fusion_mode (`str`, *optional*):
            `"logit"`: z̃ = z + λ·f (the paper's figures). `"prob"`: p̃ = clamp(softmax(z) + λ·f, floor), renormalised,
            returned as log p̃ (the paper's Eq. 8). Defaults to what `copilot_loss` trains for: `"logit"` for
            `"fused_ce"`, `"prob"` for the paper's objective.
        pooled_layers (`list[int]`, *optional*):
            Which Pilot decoder layers (0-based) are mean-pooled into the memory the Copilot attends to; all if unset.
        inference_feed (`str`, *optional*):
            What the Copilot reads on generated positions: `"copilot"` its own previous correction (Algorithm 2), or
            `"pilot_error"` onehot(ŷ) − p̂ of the token actually generated (what it reads in training). Defaults to
            `"pilot_error"` for `"fused_ce"` and `"copilot"` for the paper's objective.
        copilot_positions (`str`, *optional*):
            `"none"`: the paper's layout, no positional information inside the Copilot (position comes through the
            Pilot's states only). `"rotary"`: rotary positions with the rope configuration of the decoder whose layers
            the blocks copy (the Pilot's, or the pretrained source's: type, θ, scaling), built by that family's
            transformers rotary embedding, on the queries and keys of self- and cross-attention (X̃ and the pooled
            states keyed at their own positions). Positions count real tokens (from the attention mask), so left
            padding changes nothing. Decoder-only Pilots only: a T5 Copilot always has T5's relative position bias.
            Unset, the Pilot family's default (`families.py`: `"rotary"` for Llama, Qwen2 and Mistral, `"none"` for
            T5), recorded in the config when the adapter is created. An adapter saved before this field existed is
            position-free and loads so.
        copilot_same_position (`str`, *optional*):
            What the Copilot's input at position t holds besides the feed (the Pilot's error, or its own output):
            `"none"` nothing; `"token"` X̃_t, the Pilot's input embedding at t, added to it; `"token_hidden"` X̃_t as
            `"token"` and the pooled Pilot state h_t through a zero-initialised projection (EAGLE's
            fc(cat(token, feature)), written as a sum), so a new Copilot starts as a `"token"` one; `"hidden"` h_t
            alone, through that map. For a T5 Pilot the token at t is the decoder's input token there (its X̃, the
            encoder's output, has no decoder position). Unset, the Pilot family's default (`"token_hidden"` for
            Llama, Qwen2 and Mistral, `"none"` for T5), recorded in the config when the adapter is created.
        dropout (`float`, defaults to 0.0):
            Dropout on the Copilot's attention and MLP outputs while training.
        prob_floor (`float`, defaults to 1e-10):
            Lower clamp of fused probabilities in `"prob"` mode, so log p̃ stays finite.
        modules_to_save (`list[str]`, *optional*):
            Pilot modules to train and save alongside the Copilot (read and written by TRL's `SFTTrainer`).
        trainable_token_indices (`list[int]` or `dict`, *optional*):
            Token indices whose embeddings train (read and written by TRL's `SFTTrainer` for added chat tokens).
        pilot_error_top_k (`int`, *optional*):
            How the error ℓ·E = E[y] − p̂·E the Copilot reads outside training (generation, scoring, teacher-forced
            evaluation) is built: from the top-k of p̂, the mass outside it dropped, exactly as the Mistake Log gives
            it in training (k rows of E per position instead of a |V|×d product); `0`: from the dense p̂.
            `CopilotSFTTrainer` sets it to the k it trained with (`mistake_log_top_k`; `0` when it trains on the
            dense p̂, `mistake_log_sampling="current"`). Defaults to the Mistake Log's default, 8; an adapter saved
            before this field existed read the dense p̂ and loads with `0`, so it behaves as it did.
    """

    # The choices are the registered objectives' names (the annotation is evaluated when read, e.g. by
    # `HfArgumentParser`, through `typing.get_type_hints`).
    copilot_loss: Literal[tuple(OBJECTIVES)] | None = field(default=None, metadata={"help": OBJECTIVE_HELP})
    num_layers: int | None = field(
        default=None, metadata={"help": "Copilot depth; defaults to a quarter of the Pilot's layers (at least 2)."}
    )
    init: Literal["pilot_layers", "pretrained", "random"] = field(
        default="pilot_layers",
        metadata={"help": "Copy the Pilot's layers, a smaller pretrained decoder's layers, or init randomly."},
    )
    pretrained_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Smaller pretrained decoder of the Pilot's family, for init='pretrained'."}
    )
    init_layers: list[int] | None = field(
        default=None, metadata={"help": "Source layers (0-based) copied into the Copilot; evenly spaced if unset."}
    )
    fusion_lambda: float = field(default=1.0, metadata={"help": "Correction strength λ; 0 reproduces the Pilot."})
    fusion_mode: Literal["logit", "prob"] | None = field(
        default=None,
        metadata={"help": "Fuse in logit space ('logit') or probability space ('prob', Eq. 8); set by copilot_loss."},
    )
    pooled_layers: list[int] | None = field(
        default=None, metadata={"help": "Pilot decoder layers (0-based) mean-pooled for the Copilot; all if unset."}
    )
    inference_feed: Literal["copilot", "pilot_error"] | None = field(
        default=None,
        metadata={"help": "Copilot input on generated positions: its own output ('copilot') or onehot(ŷ) − p̂."},
    )
    copilot_positions: Literal["none", "rotary"] | None = field(
        default=None,
        metadata={
            "help": "Positions inside the Copilot: 'none' (the paper's) or 'rotary' (its source's rope); unset, the "
            "Pilot family's default."
        },
    )
    copilot_same_position: Literal["none", "token", "hidden", "token_hidden"] | None = field(
        default=None,
        metadata={
            "help": "Added to the Copilot's input at t: nothing, X̃_t ('token'), h_t ('hidden'), or X̃_t and h_t "
            "('token_hidden'); unset, the Pilot family's default."
        },
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout inside the Copilot while training."})
    prob_floor: float = field(default=1e-10, metadata={"help": "Clamp of fused probabilities in 'prob' mode."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Pilot modules trained and saved with the adapter (TRL reads this)."}
    )
    trainable_token_indices: list[int] | dict[str, list[int]] | None = field(
        default=None, metadata={"help": "Token indices whose embeddings train (TRL writes this for added tokens)."}
    )
    # Filled in when the adapter is created; they let a saved adapter be rebuilt and checked against a new Pilot.
    pilot_model_type: str | None = field(default=None, metadata={"help": "Set on creation: the Pilot's model_type."})
    pilot_vocab_size: int | None = field(default=None, metadata={"help": "Set on creation: the Pilot's vocab size."})
    pilot_hidden_size: int | None = field(default=None, metadata={"help": "Set on creation: the Pilot's hidden size."})
    copilot_architecture: dict[str, Any] | None = field(
        default=None, metadata={"help": "Set on creation: the Copilot network's shape (width, heads, layers, ...)."}
    )
    pilot_lora_config: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Set on creation for a LoRA-tuned Pilot: its LoRA config, re-applied when loading."},
    )
    pilot_error_top_k: int | None = field(
        default=None,
        metadata={
            "help": f"Top-k of p̂ the Copilot's error input is built from outside training, as the Mistake Log's in "
            f"training; 0: dense p̂. Defaults to {DEFAULT_TOP_K}; adapters saved without it load with 0."
        },
    )

    def __setattr__(self, name: str, value: Any) -> None:
        # Fusion settings may be changed on a live model (they take effect at the next forward), so they are checked
        # where they are set rather than deep inside the forward pass.
        if name in OBJECTIVE_FIELDS and value is None and self.__dict__.get("copilot_loss") in OBJECTIVES:
            value = getattr(OBJECTIVES[self.copilot_loss], name)  # unset means the objective's default
        if name == "fusion_lambda":
            validate_fusion_lambda(value)
        elif name == "fusion_mode" and value is not None:
            validate_fusion_mode(value)
        super().__setattr__(name, value)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.COPILOT
        if self.task_type is None:
            self.task_type = "CAUSAL_LM"
        if self.copilot_loss is None:
            # Saved adapters carry `copilot_architecture`; one without `copilot_loss` predates the field, when every
            # Copilot was trained by regression onto ℓ.
            self.copilot_loss = "rmse" if self.copilot_architecture is not None else DEFAULT_OBJECTIVE
        if self.copilot_loss not in OBJECTIVES:
            raise ValueError(
                f"CopilotConfig.copilot_loss must be one of {tuple(OBJECTIVES)}, got {self.copilot_loss!r}."
            )
        for name in OBJECTIVE_FIELDS:
            if getattr(self, name) is None:  # left unset while the objective was not known yet
                setattr(self, name, None)
        for name, choices in LAYOUT_FIELDS.items():
            if getattr(self, name) is not None:  # unset: the Pilot family's default, filled in when it is known
                _check_choice(name, getattr(self, name), choices)
        if self.num_layers is not None and (not isinstance(self.num_layers, int) or self.num_layers < 1):
            raise ValueError(f"CopilotConfig.num_layers must be an integer >= 1, got {self.num_layers!r}.")
        self._check_saved_architecture()
        if self.init not in COPILOT_INITS:
            raise ValueError(f"CopilotConfig.init must be one of {COPILOT_INITS}, got {self.init!r}.")
        if self.init == "pretrained" and not self.pretrained_model_name_or_path:
            raise ValueError("CopilotConfig(init='pretrained') needs pretrained_model_name_or_path.")
        if self.inference_feed not in INFERENCE_FEEDS:
            raise ValueError(
                f"CopilotConfig.inference_feed must be one of {INFERENCE_FEEDS}, got {self.inference_feed!r}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CopilotConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        if not (0.0 < self.prob_floor < 1.0):
            raise ValueError(f"CopilotConfig.prob_floor must be in (0, 1), got {self.prob_floor!r}.")
        if self.pilot_error_top_k is None:
            # A saved adapter (it carries `copilot_architecture`) without the field predates it: it read the dense p̂.
            self.pilot_error_top_k = 0 if self.copilot_architecture is not None else DEFAULT_TOP_K
        top_k = self.pilot_error_top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"CopilotConfig.pilot_error_top_k must be an integer >= 0, got {top_k!r}.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs):
        """PEFT's config loader, plus a check of a local adapter folder's weights file (`check_adapter_weights`).

        `PeftModel.from_pretrained` and `load_adapter` read the config first, build the adapter on the Pilot (for a
        Copilot saved from a LoRA-tuned Pilot, LoRA layers are recreated on it) and only then read the weights, with
        no hook of the tuner's in between: a file that cannot be read is refused here, before the Pilot is touched.
        """
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        folder = os.path.join(pretrained_model_name_or_path, *([subfolder] if subfolder else []))
        if os.path.isdir(folder):  # a Hub id's weights are downloaded later, by PEFT, and checked as they load
            check_adapter_weights(folder)
        return config

    def _check_saved_architecture(self) -> None:
        """A saved adapter's shape must be whole and agree with `num_layers` (a corrupt adapter_config.json is refused
        here, before any Copilot is built)."""
        if self.copilot_architecture is None:
            return
        if not isinstance(self.copilot_architecture, dict):
            raise ValueError(
                f"CopilotConfig.copilot_architecture must be a dict, got {type(self.copilot_architecture)}."
            )
        bad = [k for k in ARCHITECTURE_SIZES if not _positive_int(self.copilot_architecture.get(k))]
        if bad:
            raise ValueError(
                f"CopilotConfig.copilot_architecture needs positive integers for {bad}, got "
                f"{[self.copilot_architecture.get(k) for k in bad]}."
            )
        if self.num_layers is not None and self.num_layers != self.copilot_architecture["num_layers"]:
            raise ValueError(
                f"CopilotConfig.num_layers={self.num_layers} disagrees with copilot_architecture's num_layers="
                f"{self.copilot_architecture['num_layers']}."
            )
        self._check_saved_positions()

    def _check_saved_positions(self) -> None:
        """A saved network's positions and same-position path must be the ones the config names (unset, they are read
        from it). An adapter saved before these fields existed has neither, and is read as position-free with no
        same-position path."""
        positions = self.copilot_architecture.get("positions")
        if positions is not None and not (
            isinstance(positions, dict)
            and positions.get("kind") == "rotary"
            and isinstance(positions.get("model_type"), str)
            and isinstance(positions.get("rope_parameters"), dict)
            and _positive_int(positions.get("max_position_embeddings"))
        ):
            raise ValueError(
                "CopilotConfig.copilot_architecture['positions'] must be null or a rotary description (kind, "
                f"model_type, rope_parameters, max_position_embeddings), got {positions!r}."
            )
        saved = "rotary" if positions is not None else "none"
        self.copilot_positions = self.copilot_positions or saved
        if saved != self.copilot_positions:
            raise ValueError(
                f"CopilotConfig.copilot_positions={self.copilot_positions!r} disagrees with the saved Copilot, "
                f"which was built with copilot_positions={saved!r}."
            )
        saved = self.copilot_architecture.get("same_position", "none")
        self.copilot_same_position = self.copilot_same_position or saved
        if saved != self.copilot_same_position:
            raise ValueError(
                f"CopilotConfig.copilot_same_position={self.copilot_same_position!r} disagrees with the saved "
                f"Copilot, which was built with copilot_same_position={saved!r}."
            )


ARCHITECTURE_SIZES = ("memory_size", "hidden_size", "num_layers", "num_attention_heads", "intermediate_size")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"CopilotConfig.{name} must be one of {choices}, got {value!r}.")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_fusion_mode(mode: str) -> None:
    if mode not in FUSION_MODES:
        raise ValueError(f"fusion_mode must be one of {FUSION_MODES}, got {mode!r}.")


def validate_fusion_lambda(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"fusion_lambda must be a finite number >= 0, got {value!r}.")
