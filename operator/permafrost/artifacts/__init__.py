"""Images: references and pinning them in manifests (pure), and the OCI registry adapter."""
