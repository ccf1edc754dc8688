"""How a release exists on a host and goes live (DESIGN.md: strategies)."""
