//! The SDK configuration and the S3 client, built the same way by every component.

/// Loads the SDK configuration: the SDK's own resolution (environment, shared config,
/// instance role), with an explicit region and profile winning when given.
pub async fn load(profile: Option<&str>, region: Option<String>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    loader.load().await
}

/// An S3 client for `sdk`.
///
/// With an endpoint override (a local emulator such as moto) buckets are addressed by path,
/// not by host name; real S3 keeps virtual-host style. The SDK's own response-checksum
/// validation runs only when S3 requires it: bundle bytes are hashed end to end against the
/// metadata's SHA-256 (a stronger check), and emulators report one part's checksum for
/// multipart objects.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let path_style =
        sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(path_style)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
