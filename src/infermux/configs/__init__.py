"""Configuration models (Oumi-compatible field names) and the YAML loader."""

from infermux.configs.distributed_params import DistributedParams
from infermux.configs.endpoint_params import EndpointParams
from infermux.configs.engine_type import InferenceEngineType
from infermux.configs.fallback_params import FallbackConfig
from infermux.configs.generation_params import GenerationParams, GuidedDecodingParams
from infermux.configs.inference_config import DEFAULT_MODEL, InferenceConfig
from infermux.configs.loader import load_config
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams

__all__ = [
    "DEFAULT_MODEL",
    "DistributedParams",
    "EndpointParams",
    "FallbackConfig",
    "GenerationParams",
    "GuidedDecodingParams",
    "InferenceConfig",
    "InferenceEngineType",
    "ModelParams",
    "RemoteParams",
    "load_config",
]
