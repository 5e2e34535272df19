"""The preflight checklist: one small function per check, a registry, and a runner."""
