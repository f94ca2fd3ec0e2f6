//! kennel-client: a game client speaking PROTOCOL.md over TCP or WebSocket, for bots, load tests
//! and integration tests.
