"""What the tests share: bounded waits, the interleaving checker, the kernel harness, local
provider and MCP servers, writers killed mid-write, a virtual clock, and the run view's page
module under Node."""
