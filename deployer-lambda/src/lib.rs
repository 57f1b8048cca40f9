//! The deployer Lambda: turns one S3 "Object Created" event into one verified, exactly
//! pinned deploy command.
//!
//! Layout: [`config`] (environment, read once at cold start), [`event`] (payload parsing),
//! [`plan`] (pure decisions: ordering, claims, metadata checks, the rendered command),
//! [`edges`] (the AWS edges as small traits), [`aws`] (their SDK implementation), [`store`]
//! (typed deploy records over the record edge), [`handler`] (the invocation, generic over
//! the edges, callable in-process), [`aws_calls`] (the IAM actions the code needs; `infra/`
//! grants exactly those).

// Errors carry the object, the cause and the remedy as owned strings; they are built at most
// once per invocation, so their size does not matter and boxing them would only add noise.
#![allow(clippy::result_large_err)]

pub mod aws;
pub mod aws_calls;
pub mod config;
pub mod edges;
pub mod event;
#[cfg(test)]
mod fakes;
pub mod handler;
pub mod plan;
pub mod rollout;
pub mod store;
