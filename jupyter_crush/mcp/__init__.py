"""MCP servers: their configuration, each server's lifecycle, and their tools for the agent."""
