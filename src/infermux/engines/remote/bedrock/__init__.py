"""BEDROCK: Amazon Bedrock's Converse API through boto3 (engine) and its tool and reasoning blocks (tools).

``infermux.engines.remote.bedrock.BedrockInferenceEngine`` stays importable from here
(the class lives in :mod:`.engine`, imported on first use).
"""

from infermux.engines.exports import engine_class_of

__all__ = ["BedrockInferenceEngine"]

__getattr__ = engine_class_of(__name__, "BedrockInferenceEngine")
