"""GuardrailPolicies: the CEL engine (pure), ``permafrost check`` over manifests, reading
manifests safely, and the compiled policies the operator keeps in memory."""
