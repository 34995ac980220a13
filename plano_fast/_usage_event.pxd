# The compiled UsageEvent constructor for other compiled modules (plano_fast/gateway/_settle.pyx):
# a C call with every field positional, in field order (``new_usage_event`` without its argument parsing).

cdef object new_event(object request_id, object time_ns, object provider, object model, object streaming,
                      object status, object http_status, object input_tokens, object output_tokens,
                      object cache_read_tokens, object cache_write_tokens, object reasoning_tokens,
                      object has_usage, object project_id, object key_hash, object user_id, object token_id,
                      object duration_ms, object wire_format, object tool_use_prompt_tokens,
                      object cache_write_1h_tokens, object audio_input_tokens, object audio_output_tokens,
                      object usage_raw, object usage_api, object reservation_overrun_nano_usd,
                      object requested_model, object attempts, object attempt_trail, object bound_cost_nano_usd,
                      object web_search_requests, object service_tier, object image_output_tokens,
                      object audio_cache_read_tokens)
