//! A small real HTTP file server for serving bundles to the host script.
