//! One classification of AWS failures for the whole workspace.
//!
//! Every SDK error, whatever the service, becomes an [`AwsError`]: the call, what it was
//! about, a [`Failure`] kind and the service's own words. The kind decides what to do:
//! [`Failure::is_transient`] kinds (throttling, a 5xx answer, no answer at all) are worth a
//! retry; the others need a person, and the message names the fix (the IAM action to grant,
//! the credentials to set, the resource to create). The decision itself is a pure function
//! of the answer's facts, [`failure_of`], so it is unit-tested without any network.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::AwsCall;

/// What kind of failure an AWS call had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The service throttled the request (HTTP 429, `Throttling`, `SlowDown`, …): retry.
    Throttled,
    /// The service failed (HTTP 5xx, `InternalError`, `ServiceUnavailable`, …): retry.
    ServiceFault,
    /// No usable answer: connection refused or reset, timeout, unreadable response: retry.
    Network,
    /// The credentials are not allowed to do this (HTTP 403, `AccessDenied`, …), or are not
    /// accepted at all (`InvalidAccessKeyId`, `ExpiredToken`, …).
    AccessDenied,
    /// No credentials could be loaded.
    NoCredentials,
    /// The resource does not exist (`NoSuchBucket`, `NoSuchKey`, HTTP 404, …).
    NotFound,
    /// A conditional request lost to another writer (HTTP 412 or 409).
    Conflict,
    /// Anything else the service refused (a 4xx answer this module has no name for).
    Refused,
}

impl Failure {
    /// Whether retrying later may succeed without anyone changing anything.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Failure::Throttled | Failure::ServiceFault | Failure::Network
        )
    }
}

/// How far a request got, as the SDK reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The service answered (an error document, a status).
    Answered,
    /// No answer: dispatch failure or timeout.
    NoAnswer,
    /// An answer arrived but could not be read.
    Unreadable,
    /// The request was never sent (it could not be built, or no credentials were found).
    NotSent,
}

/// The facts of one failed call that decide its [`Failure`].
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// How far the request got.
    pub transport: Transport,
    /// HTTP status, when the service answered.
    pub status: Option<u16>,
    /// The service's error code (`AccessDenied`, `ThrottlingException`, …).
    pub code: Option<&'a str>,
    /// The whole error text (used to recognise missing credentials, which have no code).
    pub text: &'a str,
}

const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

const FAULT_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
];

const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AllAccessDisabled",
    "UnauthorizedOperation",
    "AuthFailure",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
];

const NOT_FOUND_CODES: &[&str] = &[
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchVersion",
    "NotFound",
    "InvalidInstanceID.NotFound",
];

/// Decides the kind of a failure from its facts (pure).
pub fn failure_of(answer: &Answer<'_>) -> Failure {
    let code = answer.code.unwrap_or_default();
    let lower = answer.text.to_ascii_lowercase();
    let missing_credentials = lower.contains("credential")
        && (lower.contains("no ") || lower.contains("provider") || lower.contains("load"));
    if THROTTLING_CODES.contains(&code) || answer.status == Some(429) {
        Failure::Throttled
    } else if FAULT_CODES.contains(&code) || answer.status.is_some_and(|s| s >= 500) {
        Failure::ServiceFault
    } else if ACCESS_CODES.contains(&code) || answer.status == Some(403) {
        Failure::AccessDenied
    } else if NOT_FOUND_CODES.contains(&code) || answer.status == Some(404) {
        Failure::NotFound
    } else if matches!(answer.status, Some(409 | 412)) {
        Failure::Conflict
    } else if missing_credentials && answer.transport != Transport::Answered {
        Failure::NoCredentials
    } else {
        match answer.transport {
            Transport::NoAnswer | Transport::Unreadable => Failure::Network,
            Transport::Answered | Transport::NotSent => Failure::Refused,
        }
    }
}

/// An AWS call that failed, classified; the message names the call, the object, the cause
/// and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// The SDK operation, e.g. `s3:PutObject`.
    pub operation: &'static str,
    /// The IAM action that authorises it (named when access is denied).
    pub iam_action: &'static str,
    /// What it was about: `s3://bucket/key?versionId=…`, `bucket "b"`, instance tags, ….
    pub resource: String,
    /// The kind, which decides between retrying and fixing.
    pub failure: Failure,
    /// HTTP status, when the service answered.
    pub status: Option<u16>,
    /// The service's error code, when it sent one.
    pub code: Option<String>,
    /// The service's message, or the transport's story.
    pub detail: String,
}

impl AwsError {
    /// A failure found outside an SDK error (a response without a required field, a
    /// presigning setting refused, a body that broke off): described by `detail`.
    pub fn new(
        call: &AwsCall,
        resource: impl Into<String>,
        failure: Failure,
        detail: String,
    ) -> Self {
        Self {
            operation: call.operation,
            iam_action: call.iam_action,
            resource: resource.into(),
            failure,
            status: None,
            code: None,
            detail,
        }
    }

    /// Whether retrying later may succeed (throttling, 5xx, network).
    pub fn is_transient(&self) -> bool {
        self.failure.is_transient()
    }

    fn explain(&self) -> String {
        let status = self
            .status
            .map(|s| format!("HTTP {s}, "))
            .unwrap_or_default();
        let said = format!("({status}{})", self.detail);
        match self.failure {
            Failure::Throttled => format!("AWS throttled the request {said}; this is transient: retry in a moment"),
            Failure::ServiceFault => format!("AWS failed to answer {said}; this is transient: retry"),
            Failure::Network => format!("network failure, no usable answer from AWS {said}; check connectivity and AWS_REGION/AWS_ENDPOINT_URL, then retry"),
            Failure::AccessDenied => format!(
                "access denied {said}; grant IAM action {} on it to the credentials in use (infra/ defines the uploader policy and the deployer's role)",
                self.iam_action
            ),
            Failure::NoCredentials => format!(
                "no AWS credentials found {said}; set AWS_PROFILE (or --profile), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with a role"
            ),
            Failure::NotFound if self.code.as_deref() == Some("NoSuchBucket") => format!(
                "the bucket does not exist (or is in another account) {said}; create it with infra/ or fix the bucket name (`bucket` in dropship.toml, --bucket)"
            ),
            Failure::NotFound => format!("it does not exist {said}; check the name, the region and the account"),
            Failure::Conflict => format!("another writer changed it first {said}; read it again and retry"),
            Failure::Refused => format!("AWS refused the request {said}"),
        }
    }
}

impl std::fmt::Display for AwsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {} failed: {}",
            self.operation,
            self.resource,
            self.explain()
        )
    }
}

impl std::error::Error for AwsError {}

/// HTTP status of an SDK error's response, when the service answered.
pub fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// The service's error code: from the error document, or from the `X-Amzn-ErrorType` header
/// the JSON protocols also send (all that is left when the body cannot be parsed).
pub fn error_code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    err.code().map(str::to_owned).or_else(|| {
        err.raw_response()
            .and_then(|r| r.headers().get("x-amzn-errortype"))
            .map(|v| v.split(':').next().unwrap_or(v).to_owned())
    })
}

/// Classifies an SDK error of `call` about `resource`.
pub fn classify<E>(
    call: &AwsCall,
    resource: impl Into<String>,
    err: &SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = error_code(err);
    let text = DisplayErrorContext(err).to_string();
    // The service's own words when it answered; otherwise the transport's story.
    let detail = match (&code, err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.clone(),
        _ => text.clone(),
    };
    let transport = match err {
        SdkError::ServiceError(_) => Transport::Answered,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Transport::NoAnswer,
        SdkError::ResponseError(_) => Transport::Unreadable,
        _ => Transport::NotSent,
    };
    let status = http_status(err);
    let failure = failure_of(&Answer {
        transport,
        status,
        code: code.as_deref(),
        text: &text,
    });
    AwsError {
        operation: call.operation,
        iam_action: call.iam_action,
        resource: resource.into(),
        failure,
        status,
        code,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, code: &str) -> Failure {
        failure_of(&Answer {
            transport: Transport::Answered,
            status: Some(status),
            code: Some(code),
            text: code,
        })
    }

    const PUT: AwsCall = AwsCall {
        operation: "s3:PutObject",
        iam_action: "s3:PutObject",
        why: "upload",
    };

    fn error(failure: Failure, code: Option<&str>) -> AwsError {
        AwsError {
            code: code.map(str::to_owned),
            status: Some(500),
            ..AwsError::new(
                &PUT,
                "s3://b/releases/shop/prod.tar.gz",
                failure,
                "x".into(),
            )
        }
    }

    #[test]
    fn throttling_and_5xx_are_transient_whatever_the_service_calls_them() {
        for (status, code) in [
            (503, "SlowDown"),
            (400, "Throttling"),
            (400, "ThrottlingException"),
            (400, "RequestLimitExceeded"),
            (429, "TooManyRequestsException"),
            (429, "Anything"),
        ] {
            assert_eq!(
                answered(status, code),
                Failure::Throttled,
                "{status} {code}"
            );
        }
        for (status, code) in [
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
            (502, "BadGateway"),
            (400, "RequestTimeout"),
            (500, ""),
        ] {
            assert_eq!(
                answered(status, code),
                Failure::ServiceFault,
                "{status} {code}"
            );
        }
        for f in [Failure::Throttled, Failure::ServiceFault, Failure::Network] {
            assert!(f.is_transient(), "{f:?}");
        }
        for f in [
            Failure::AccessDenied,
            Failure::NoCredentials,
            Failure::NotFound,
            Failure::Conflict,
            Failure::Refused,
        ] {
            assert!(!f.is_transient(), "{f:?}");
        }
    }

    #[test]
    fn refusals_are_told_apart() {
        assert_eq!(answered(403, "AccessDenied"), Failure::AccessDenied);
        assert_eq!(
            answered(400, "AccessDeniedException"),
            Failure::AccessDenied
        );
        assert_eq!(
            answered(400, "UnauthorizedOperation"),
            Failure::AccessDenied
        );
        assert_eq!(answered(403, "InvalidAccessKeyId"), Failure::AccessDenied);
        assert_eq!(answered(400, "ExpiredToken"), Failure::AccessDenied);
        assert_eq!(answered(404, "NoSuchBucket"), Failure::NotFound);
        assert_eq!(answered(404, ""), Failure::NotFound);
        assert_eq!(answered(412, "PreconditionFailed"), Failure::Conflict);
        assert_eq!(
            answered(409, "ConditionalRequestConflict"),
            Failure::Conflict
        );
        assert_eq!(answered(400, "InvalidParameterValue"), Failure::Refused);
    }

    #[test]
    fn transport_failures_and_missing_credentials() {
        let no_answer = |text| {
            failure_of(&Answer {
                transport: Transport::NoAnswer,
                status: None,
                code: None,
                text,
            })
        };
        assert_eq!(
            no_answer("dispatch failure: connection refused"),
            Failure::Network
        );
        assert_eq!(
            failure_of(&Answer {
                transport: Transport::Unreadable,
                status: None,
                code: None,
                text: "unexpected end of body",
            }),
            Failure::Network
        );
        assert_eq!(
            no_answer("failed to load credentials: no providers in chain provided credentials"),
            Failure::NoCredentials
        );
        assert_eq!(
            failure_of(&Answer {
                transport: Transport::NotSent,
                status: None,
                code: None,
                text: "the credential provider was not enabled",
            }),
            Failure::NoCredentials
        );
    }

    #[test]
    fn messages_name_the_call_the_object_and_the_fix() {
        let denied = error(Failure::AccessDenied, Some("AccessDenied")).to_string();
        assert!(
            denied.starts_with(
                "s3:PutObject on s3://b/releases/shop/prod.tar.gz failed: access denied"
            ) && denied.contains("grant IAM action s3:PutObject")
                && denied.contains("infra/"),
            "{denied}"
        );
        let bucket = error(Failure::NotFound, Some("NoSuchBucket")).to_string();
        assert!(
            bucket.contains("does not exist") && bucket.contains("infra/"),
            "{bucket}"
        );
        let throttled = error(Failure::Throttled, Some("SlowDown")).to_string();
        assert!(
            throttled.contains("transient") && throttled.contains("retry"),
            "{throttled}"
        );
        let net = error(Failure::Network, None).to_string();
        assert!(net.contains("network") && net.contains("retry"), "{net}");
        let creds = error(Failure::NoCredentials, None).to_string();
        assert!(
            creds.contains("credentials") && creds.contains("AWS_PROFILE"),
            "{creds}"
        );
        assert!(error(Failure::ServiceFault, None)
            .to_string()
            .contains("HTTP 500"));
    }
}
