//! userli HTTP API backend (stub, being written).
