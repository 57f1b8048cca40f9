//! The Lambda binary: reads configuration once at cold start (invalid configuration stops
//! the function before its first event, with the variable named), logs JSON via `tracing`
//! for CloudWatch, and serves invocations with [`deployer_lambda::handler::Deployer`].

use std::io::{Read, Write};
use std::net::TcpStream;

use anyhow::Context;
use deployer_lambda::aws::Clients;
use deployer_lambda::config::Config;
use deployer_lambda::handler::{Deployer, Invocation};
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;
use time::OffsetDateTime;

/// Tell the Runtime API why initialisation failed, so the function's status shows it.
fn report_init_error(message: &str) {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let body =
        serde_json::json!({"errorMessage": message, "errorType": "Runtime.InvalidConfiguration"})
            .to_string();
    let Ok(mut stream) = TcpStream::connect(&api) else {
        return;
    };
    let request = format!(
        "POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
         Lambda-Runtime-Function-Error-Type: Runtime.InvalidConfiguration\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .with_ansi(false)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            let message = format!("invalid deployer configuration: {e}");
            tracing::error!(error = %message, "cold start failed");
            report_init_error(&message);
            return Err(anyhow::anyhow!(message));
        }
    };
    // A stalled connection must not hold the invocation to its deadline: connecting and each
    // read of a response (also of the streamed bundle) are bounded (deployer_lambda::aws::
    // sdk_loader); the handler also stops DEADLINE_MARGIN before the deadline and records why.
    let sdk = deployer_lambda::aws::sdk_loader().load().await;
    let deployer = Deployer::new(config, Clients::new(&sdk));
    let deployer = &deployer;
    tracing::info!(buckets = ?deployer.config().allowed_buckets, "deployer ready");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(event.context.deadline) * 1_000_000,
        )
        .ok();
        let inv = Invocation {
            request_id: Some(event.context.request_id.clone()),
            deadline,
        };
        match deployer.handle(&event.payload, &inv).await {
            Ok(response) => serde_json::to_value(response).map_err(|e| Diagnostic {
                error_type: "ResponseEncoding".into(),
                error_message: e.to_string(),
            }),
            Err(e) => Err(Diagnostic {
                error_type: e.kind().into(),
                error_message: e.to_string(),
            }),
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("Lambda runtime loop failed: {e}"))
    .context("deployer-lambda stopped")
}
