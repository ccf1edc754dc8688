"""How a host proves a release serves (DESIGN.md: probes)."""
