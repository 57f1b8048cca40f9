//! `bundle-and-upload`: packs the git tree at HEAD into a deterministic `.tar.gz` and uploads
//! it to the one S3 key of its app and environment, where every upload is a new version.
//!
//! Layout follows "functional core, thin shell": [`config`], [`select`] and
//! [`archive::plan`] decide; [`git`], [`archive::write_tar`], [`pgz`] and [`s3`] do I/O.
//! The operator commands (`versions`, `status`, `restore`, `--wait`) live in [`ops`].

pub mod archive;
pub mod aws_calls;
pub mod bundle;
pub mod config;
pub mod git;
pub mod ops;
pub mod pgz;
pub mod s3;
pub mod select;
pub mod upload;
