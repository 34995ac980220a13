"""One module per mode: identify, admit, route and rewrite a request for the relay."""
