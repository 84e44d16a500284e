"""What the tests share: bounded waits, the interleaving checker, the kernel harness, local
provider and MCP servers, writers killed mid-write, and a virtual clock."""
