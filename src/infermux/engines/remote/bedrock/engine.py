"""BEDROCK: AWS Bedrock's Converse API through boto3's ``bedrock-runtime`` client.

boto3 does its own HTTP, signing and retries, so this engine does not use the aiohttp transport:
one client is built per engine (``AWS_REGION`` required), its connection pool and botocore's
adaptive retry mode sized from ``remote_params``; rows run on a thread pool of ``num_workers``.

Request mapping (from the Converse API reference): system messages → ``system`` text blocks;
user/assistant turns (consecutive same-role turns merged) with ``text`` and ``image`` blocks (every
image of a message, as bytes with its format, or an ``s3Location``); ``inferenceConfig`` with
maxTokens, temperature, topP, stopSequences; ``model.model_kwargs`` → ``additionalModelRequestFields``.
Tools: ``toolConfig``, ``toolUse`` / ``toolResult`` blocks and reasoning, see :mod:`.tools`.
The reply's text blocks are joined; ``usage``, ``stopReason`` and latency go to the metadata.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from infermux.configs.generation_params import GenerationParams
from infermux.configs.model_params import ModelParams
from infermux.configs.remote_params import RemoteParams
from infermux.engines.base import InferenceEngine
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.anthropic.models import (
    ACCEPTS_SAMPLING_KEY,
    SAMPLING_PARAMS,
    claude_limit_problems,
    sends_sampling,
    warn_dropped_sampling,
)
from infermux.engines.remote.bedrock.tools import reply_parts, tool_config, tool_result_block, tool_use_blocks
from infermux.engines.remote.media import image_payload
from infermux.engines.remote.messages import merge_turns
from infermux.engines.tool_calls import CallPairing
from infermux.errors import AuthenticationError, ConfigError, ErrorKind, RemoteError, RowError
from infermux.samples import merge_replies
from infermux.types import Conversation, FinishReason, Message, Usage

if TYPE_CHECKING:
    from infermux.engines.remote.bedrock.batches import BedrockBatchClient

__all__ = ["BedrockInferenceEngine", "build_converse_request"]

_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
_AUTH_CODES = frozenset(
    {"AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException", "InvalidSignatureException"}
)
_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ServiceUnavailableException",
        "InternalServerException",
        "ModelNotReadyException",
        "ModelTimeoutException",
    }
)
_QUOTA_HINT = (
    "This is a service quota of the AWS account, not a momentary throttle: request a quota increase "
    "(Service Quotas console), use another region or model, or rerun the job later."
)
_CREDENTIALS_HINT = (
    "Configure AWS credentials (aws configure, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "or an IAM role) with access to this Bedrock model."
)


def _blocks(message: Message) -> list[dict[str, Any]]:
    if not isinstance(message.content, list):
        return [{"text": message.text}]
    blocks: list[dict[str, Any]] = []
    for item in message.content:
        if not item.is_image():
            if item.content:
                blocks.append({"text": item.content})
            continue
        image = image_payload(item)
        if image.data is None:
            if not str(image.url).startswith("s3://"):
                raise ValueError(f"BEDROCK takes images as files, bytes or s3:// URIs, not {str(image.url)[:80]}")
            fmt = (image.format or "").replace("jpg", "jpeg")
            blocks.append({"image": {"format": fmt or "jpeg", "source": {"s3Location": {"uri": image.url}}}})
        elif image.format not in _FORMATS:
            raise ValueError(f"BEDROCK accepts PNG, JPEG, GIF or WebP images; this one is {image.media_type}")
        else:
            blocks.append({"image": {"format": image.format, "source": {"bytes": image.data}}})
    return blocks


def build_converse_request(
    model_id: str,
    conversation: Conversation,
    generation: GenerationParams,
    extra_fields: dict[str, Any],
    *,
    sampling: bool = True,
) -> dict[str, Any]:
    """Keyword arguments of ``client.converse`` for ``conversation`` (without temperature and topP when
    ``sampling`` is False: models that refuse them)."""
    texts, messages = merge_turns(
        conversation,
        CallPairing("tooluse"),
        content=_blocks,
        calls=lambda message, ids: tool_use_blocks(message, ids, conversation.metadata),
        result=tool_result_block,
    )
    system = [{"text": text} for text in texts]
    config: dict[str, Any] = {"maxTokens": generation.max_new_tokens}
    if sampling:
        config["temperature"] = generation.temperature
    if sampling and generation.top_p < 1.0:
        config["topP"] = generation.top_p
    if generation.stop_strings:
        config["stopSequences"] = list(generation.stop_strings)
    request: dict[str, Any] = {"modelId": model_id, "messages": messages, "inferenceConfig": config}
    if system:
        request["system"] = system
    if extra_fields:
        request["additionalModelRequestFields"] = extra_fields
    tools = tool_config(conversation, generation)
    if tools is not None:
        request["toolConfig"] = tools
    return request


def _usage(usage: Any) -> Usage | None:
    """Converse ``usage`` in our terms: ``inputTokens`` leaves out the prompt-cache reads and writes
    (``cacheReadInputTokens``, ``cacheWriteInputTokens``); our ``prompt_tokens`` counts them, as OpenAI's
    and the price library's do. ``outputTokens`` includes reasoning (billed as output). No usage: None
    (unknown, never zeros)."""
    if not isinstance(usage, dict):
        return None
    read, written = usage.get("cacheReadInputTokens"), usage.get("cacheWriteInputTokens")
    given, completion = usage.get("inputTokens"), usage.get("outputTokens")
    if given is None and completion is None:
        return None
    prompt = None if given is None else int(given) + int(read or 0) + int(written or 0)
    total = usage.get("totalTokens") if not (read or written) else None  # recomputed when the cache counts
    return Usage.of(prompt, completion, total, cached_tokens=read, cache_creation_tokens=written)


def parse_converse_response(
    response: dict[str, Any], conversation: Conversation, generation: GenerationParams
) -> Conversation:
    """``conversation`` with the Converse answer (text, tool calls, reasoning) and its metadata."""
    content = response["output"]["message"]["content"]
    text, calls, reasoning, update = reply_parts(content, conversation.metadata, generation)
    usage = _usage(response.get("usage"))
    stop = response.get("stopReason")
    metadata: dict[str, Any] = {**update, "finish_reason": FinishReason.parse(stop), "stop_reason": stop}
    if usage is not None:
        metadata["usage"] = usage.to_json_dict()
    latency = (response.get("metrics") or {}).get("latencyMs")
    if latency is not None:
        metadata["latency_ms"] = latency
    return conversation.with_reply(text, metadata, tool_calls=calls, reasoning_content=reasoning)


class BedrockInferenceEngine(InferenceEngine):
    """Foundation models on AWS Bedrock (Anthropic, Meta, Amazon, Mistral, ...) via Converse."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=frozenset({"temperature", "top_p", "stop_strings", "n"}),
        images=True,
        tools=True,
        batch_api=True,
        notes=(
            "n > 1 sends n Converse calls per row; no log-probabilities.",
            "Converse has no tool_choice none or parallel_tool_calls switch (see docs/tools.md).",
            "model.model_kwargs are sent as additionalModelRequestFields (accepts_sampling excepted: it overrides "
            "the table of Claude models that take no sampling parameters); Claude's thinking limits are checked "
            "before sending, and no temperature goes with thinking.",
            "remote_params.api_url, when set, replaces the bedrock-runtime endpoint (e.g. a VPC endpoint).",
        ),
        value_ranges={"temperature": (0.0, 1.0)},  # Converse's InferenceConfiguration
    )
    env_vars: ClassVar[Mapping[str, str]] = {
        "AWS_REGION": "required: the Bedrock region, e.g. us-east-1",
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE": "credentials (or `aws configure`, or an IAM role)",
        "BEDROCK_BATCH_S3_URI / BEDROCK_BATCH_ROLE_ARN": "`infermux batch` only: the s3://bucket/prefix model "
        "invocation jobs read and write, and the service role Bedrock runs them as",
    }

    def setup(self) -> None:
        super().setup()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            raise ConfigError(
                "BEDROCK needs the AWS region: set the AWS_REGION environment variable "
                "(e.g. export AWS_REGION=us-east-1)."
            )
        params = self.remote_params or RemoteParams()
        self.num_workers = params.num_workers if "num_workers" in params.model_fields_set else 4
        import boto3
        from botocore.config import Config

        config = Config(
            region_name=region,
            retries={
                "total_max_attempts": params.max_retries + 1,
                "mode": "adaptive" if params.use_adaptive_concurrency else "standard",
            },
            max_pool_connections=max(10, self.num_workers),
            connect_timeout=params.connection_timeout,
            read_timeout=max(params.connection_timeout, 60.0),
        )
        self.region = region
        self.sends_sampling = sends_sampling(self.model_params.model_name, self.model_params.model_kwargs)
        self._warned_sampling = False
        session = boto3.session.Session()  # credentials as the environment says now (not boto3's cached default)
        self.client = session.client("bedrock-runtime", config=config, endpoint_url=params.api_url or None)
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def config_limit_problems(cls, model: ModelParams, generation: GenerationParams) -> list[str]:
        declared = super().config_limit_problems(model, generation)
        return claude_limit_problems(declared, model.model_name, model.model_kwargs, generation)

    def chunk_size(self, generation: GenerationParams) -> int:
        return 1

    def max_concurrency(self) -> int:
        return self.num_workers

    async def _open(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="infermux-bedrock")

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def converse_request(self, conversation: Conversation, generation: GenerationParams) -> dict[str, Any]:
        """Keyword arguments of ``converse`` for one row (a ``ValueError`` for a row that cannot be sent)."""
        extra = dict(self.model_params.model_kwargs)
        extra.pop(ACCEPTS_SAMPLING_KEY, None)  # ours, not Bedrock's
        if not self.sends_sampling:
            explicit = set(SAMPLING_PARAMS) & (generation.model_fields_set | set(extra))
            for name in SAMPLING_PARAMS:
                extra.pop(name, None)
            if explicit and not self._warned_sampling:
                self._warned_sampling = True
                warn_dropped_sampling("BEDROCK", self.model_params.model_name, explicit)
        request = build_converse_request(
            self.model_params.model_name, conversation, generation, extra, sampling=self.sends_sampling
        )
        if "thinking" in extra:  # extended thinking takes no temperature (as on ANTHROPIC)
            request["inferenceConfig"].pop("temperature", None)
        return request

    def batch_client(self) -> BedrockBatchClient:
        """Model invocation jobs with files in S3 (:mod:`infermux.engines.remote.bedrock.batches`)."""
        from infermux.engines.remote.bedrock.batches import BedrockBatchClient

        return BedrockBatchClient(self)

    async def _infer_chunk(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        loop = asyncio.get_running_loop()
        results: list[Conversation | RowError] = []
        for conversation in conversations:
            try:
                request = self.converse_request(conversation, generation)
            except ValueError as exc:
                results.append(RowError.from_exception(exc, ErrorKind.INVALID_INPUT))
                continue
            try:
                # Converse has no ``n``: n calls per row, the row done only when all are in.
                calls = [functools.partial(self.client.converse, **request) for _ in range(generation.n)]
                responses = await asyncio.gather(*(loop.run_in_executor(self._pool, call) for call in calls))
                answers = [parse_converse_response(r, conversation, generation) for r in responses]
                results.append(answers[0] if generation.n == 1 else merge_replies(conversation, answers, generation))
            except Exception as exc:  # botocore errors become row errors; see _remote_error
                results.append(RowError.from_exception(_remote_error(exc)))
        return results

    def close(self) -> None:
        self.client.close()


def _remote_error(exc: Exception) -> RemoteError:
    """A botocore failure as the RemoteError it amounts to (kinds as on every other remote engine)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "ClientError"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = f"{code}: {error.get('Message', exc)}"
        if code in _AUTH_CODES:
            return AuthenticationError(f"{message}. {_CREDENTIALS_HINT}", status=status, kind=ErrorKind.AUTHENTICATION)
        if code == "ServiceQuotaExceededException":
            return RemoteError(f"{message}. {_QUOTA_HINT}", status=status, kind=ErrorKind.QUOTA_EXCEEDED)
        if code in _RETRYABLE_CODES:
            return RemoteError(message, status=status, retryable=True)
        return RemoteError(message, status=status, kind=ErrorKind.INVALID_REQUEST)
    if isinstance(exc, NoCredentialsError):
        return AuthenticationError(f"No AWS credentials found. {_CREDENTIALS_HINT}", kind=ErrorKind.AUTHENTICATION)
    if isinstance(exc, ParamValidationError):
        return RemoteError(str(exc), kind=ErrorKind.INVALID_INPUT)
    if isinstance(exc, BotoCoreError):
        return RemoteError(str(exc), retryable=True, kind=ErrorKind.CONNECTION_ERROR)
    if isinstance(exc, (KeyError, TypeError)):
        return RemoteError(f"unexpected Converse reply: {exc!r}", kind=ErrorKind.MALFORMED_RESPONSE)
    raise exc
