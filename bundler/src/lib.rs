//! `bundle-and-upload`, the developer's and CI's command: packs the git tree at HEAD into a
//! deterministic `.tar.gz` and uploads it to the one S3 key of its app and environment, where
//! every upload is a new version.
//!
//! Layout follows "functional core, thin shell": `dropship.toml` is read by
//! [`dropship_contract::config`], [`select`] and [`archive::plan`] decide; [`git`],
//! [`archive::write_tar`], [`pgz`] and [`s3`] do I/O; [`bundle`] and [`upload`] put them
//! together. What happens after the upload is the operator's side (`dropship_operator`):
//! `--wait` uses it to follow the deploy.

pub mod archive;
pub mod aws_calls;
pub mod bundle;
pub mod git;
pub mod pgz;
pub mod s3;
pub mod select;
pub mod upload;
