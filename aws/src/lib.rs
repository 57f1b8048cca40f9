//! The AWS edge every dropship component shares (the CLIs and the Lambda), kept out of
//! `dropship-contract` so the contract stays free of SDK dependencies.
//!
//! - [`error`]: the one classification of AWS failures. Throttling, 5xx and network failures
//!   are transient (retry); access denied, missing credentials and missing resources are
//!   named with their fix. The CLIs turn it into exit codes, the Lambda into a retried
//!   invocation.
//! - [`sdk`]: loading the SDK configuration and building the S3 client the same way
//!   everywhere (path-style addressing when an endpoint override points at an emulator).
//! - [`ssm`]: the paginated, chunked read of which agents SSM reports online.
//! - [`AwsCall`]: one SDK operation and the IAM action that authorises it; each component
//!   lists its calls next to its code, and `infra/` grants exactly their actions.

pub mod error;
pub mod sdk;
pub mod ssm;

pub use error::{classify, error_code, http_status, AwsError, Failure};

/// One SDK operation a component performs, with the IAM action AWS authorises it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsCall {
    /// Service and operation as the SDK names it, e.g. `s3:HeadObject`.
    pub operation: &'static str,
    /// The IAM action the call is authorised by, e.g. `s3:GetObjectVersion`.
    pub iam_action: &'static str,
    /// Why the component makes it.
    pub why: &'static str,
}

/// The IAM actions behind `calls`, each once, in first-seen order.
pub fn iam_actions(calls: &[AwsCall]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::with_capacity(calls.len());
    for call in calls {
        if !out.contains(&call.iam_action) {
            out.push(call.iam_action);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_actions_are_listed_once_in_call_order() {
        let call = |operation, iam_action| AwsCall {
            operation,
            iam_action,
            why: "",
        };
        let calls = [
            call("s3:HeadObject", "s3:GetObjectVersion"),
            call("s3:PutObject", "s3:PutObject"),
            call("s3:GetObject", "s3:GetObjectVersion"),
        ];
        assert_eq!(iam_actions(&calls), ["s3:GetObjectVersion", "s3:PutObject"]);
    }
}
