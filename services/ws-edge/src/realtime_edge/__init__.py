"""The WebSocket edge: holds client connections and fans RabbitMQ messages out to them."""
