"""dynaspec-hf: routed-shortlist speculative-decoding assistants for 🤗 Transformers (DynaSpec), with DySpec trees."""

from transformers import AutoConfig, AutoModelForCausalLM

from .budget import RoundCosts
from .candidate_generator import DynaSpecCandidateGenerator
from .clusters import TokenClusters
from .configuration_dynaspec import DynaSpecConfig, Schedule, Shortlist, TemperatureBand
from .generation import GenerationStats, TreeConfig, generate
from .model_card import custom_generate_path
from .modeling_dynaspec import DynaSpecAssistant
from .router import ClusterRouter

AutoConfig.register("dynaspec", DynaSpecConfig, exist_ok=True)
AutoModelForCausalLM.register(DynaSpecConfig, DynaSpecAssistant, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "ClusterRouter",
    "DynaSpecAssistant",
    "DynaSpecCandidateGenerator",
    "DynaSpecConfig",
    "GenerationStats",
    "RoundCosts",
    "Schedule",
    "Shortlist",
    "TemperatureBand",
    "TokenClusters",
    "TreeConfig",
    "custom_generate_path",
    "generate",
]
