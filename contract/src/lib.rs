//! The contract every dropship component shares.
//!
//! The bundler writes what the Lambda reads, and the Lambda renders what the host script
//! reads. Each of those agreements lives here exactly once: key naming, object metadata, the
//! repository's `dropship.toml`, the manifest and deploy settings, tar-entry rules and the
//! streaming bundle verifier, the one shell-value encoder, the one percent encoding, the host
//! script's inputs and exit codes, deploy records, S3 sequencer ordering, the events
//! dropship emits and how its AWS parts find each other (tags, log names, rule names).

pub mod config;
pub mod events;
pub mod fleet;
pub mod host;
pub mod key;
pub mod manifest;
pub mod metadata;
pub mod percent;
pub mod record;
pub mod sequencer;
pub mod shell;
pub mod tar_rules;
pub mod verify;
pub mod wiring;
