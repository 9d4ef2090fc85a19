"""Admission guardrails: the rules (pure), the webhook server that answers the apiserver,
its TLS, and break-glass sessions."""
