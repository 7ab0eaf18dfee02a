"""The service layer: the trio server, sessions, command handlers and the engine tasks.

It connects the wire (``siov_protocol``) to the model: a handler validates a request, calls the
model and builds the reply; long work runs in small trio tasks that call into the model.
"""
