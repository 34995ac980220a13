"""Type stub for plano_fast/_usage_event.pyx; see plano_fast.usage.new_usage_event."""

from plano_fast.usage import UsageEvent

FIELDS: tuple[str, ...]

def new_usage_event(
    request_id: str, time_ns: int, provider: str, model: str | None, streaming: bool, status: str,
    http_status: int, input_tokens: int, output_tokens: int, cache_read_tokens: int, cache_write_tokens: int,
    reasoning_tokens: int, has_usage: bool, project_id: str | None, key_hash: str | None, user_id: str | None,
    token_id: str | None, duration_ms: float, wire_format: str, tool_use_prompt_tokens: int,
    cache_write_1h_tokens: int, audio_input_tokens: int, audio_output_tokens: int, usage_raw: str | None,
    usage_api: str | None, reservation_overrun_nano_usd: int, requested_model: str | None, attempts: int,
    attempt_trail: str | None, bound_cost_nano_usd: int | None, web_search_requests: int,
    service_tier: str | None, image_output_tokens: int, audio_cache_read_tokens: int,
) -> UsageEvent: ...
