//! The whole pipeline on this machine (placeholder; filled in by the next commit).
