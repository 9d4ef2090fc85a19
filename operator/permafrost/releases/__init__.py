"""GuardedReleases: the rollout planner (pure), what it observes and builds, and the
reconciler that applies its plans (the shell)."""
