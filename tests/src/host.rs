//! Sandboxed host roots for the host-script suite (filled in by the host-script work).
