"""``nn.Module`` token mixers and building blocks; see :mod:`mesanet.layers.base` for their contract."""

from .attention import Attention, SlidingWindowAttention, WindowKVState
from .base import KVState, RecurrentState
from .delta_net import DeltaNet, DeltaRuleMixer
from .gated_delta_net import GatedDeltaNet
from .gla_layer import GatedLinearAttention, Mamba2GLA
from .hawk import Hawk, rg_lru_scan
from .mesa_layer import LAMBDA_LOWER_BOUND, MesaLayer
from .mlp import GatedMLP
from .norms import RMSNorm
from .recurrent_mixer import GAMMA_CAP, RecurrentMixer, mark_no_weight_decay
from .registry import MIXERS, build_mixer, register_mixer
from .rope import RotaryEmbedding, apply_rotary
from .sherman_morrison_layer import ShermanMorrisonMesa
from .short_conv import ShortConvolution
from .single_state_mixer import SingleStateMixer
from .solver_stats import LayerSolverSummary, SolverStatsCollector, collect_solver_stats, mesa_layers

__all__ = [
    "Attention",
    "DeltaNet",
    "DeltaRuleMixer",
    "GAMMA_CAP",
    "GatedDeltaNet",
    "GatedLinearAttention",
    "GatedMLP",
    "Hawk",
    "KVState",
    "LAMBDA_LOWER_BOUND",
    "MIXERS",
    "Mamba2GLA",
    "MesaLayer",
    "RMSNorm",
    "RecurrentMixer",
    "RecurrentState",
    "RotaryEmbedding",
    "ShermanMorrisonMesa",
    "ShortConvolution",
    "SingleStateMixer",
    "SlidingWindowAttention",
    "WindowKVState",
    "apply_rotary",
    "build_mixer",
    "mark_no_weight_decay",
    "register_mixer",
    "rg_lru_scan",
    "LayerSolverSummary",
    "SolverStatsCollector",
    "collect_solver_stats",
    "mesa_layers",
    "solver_settings",
]
