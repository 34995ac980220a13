wrk.method = "POST"
wrk.body = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in one short sentence.\"}]}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["authorization"] = "Bearer sk-bench-config-ns_sat-0123456789abcdef"
