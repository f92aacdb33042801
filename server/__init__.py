"""stellar-relay: restock webhooks in, one websocket frame per restock out."""
