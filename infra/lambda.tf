resource "aws_lambda_function" "deployer" {
  #checkov:skip=CKV_AWS_116:Failed asynchronous invocations go to the on-failure destination (aws_lambda_function_event_invoke_config.deployer to the failed_deploys queue), the successor of Lambda DLQs that keeps the event plus the error; a DLQ in addition would be a second, poorer copy of the same failures.
  #checkov:skip=CKV_AWS_117:The function only calls public AWS APIs (S3, EC2, SSM, CloudWatch Logs) and hosts nothing reachable; placing it in a VPC would need NAT or four interface endpoints without narrowing what it can reach.
  #checkov:skip=CKV_AWS_173:The environment holds only non-secret settings (bucket name, tag keys, timeouts), encrypted at rest by Lambda's AWS-managed key; a customer key would add no confidentiality.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile owned by the user's release pipeline; the zip is built from this repository by the user's own CI, and updating the function is restricted by IAM.
  # One function per environment class (local.environment_classes), each with its own
  # reserved concurrency: a noisy class cannot take the other's slots.
  for_each = local.environment_classes

  function_name = local.function_names[each.key]
  description   = "dropship (${each.key}: ${join(", ", each.value)}): verify a release bundle version and dispatch the host deploy over SSM"
  role          = aws_iam_role.lambda.arn

  filename         = var.lambda_zip_path
  source_code_hash = filebase64sha256(var.lambda_zip_path)
  handler          = "bootstrap"
  runtime          = "provided.al2023"
  architectures    = ["arm64"]

  memory_size                    = var.lambda_memory_mb
  timeout                        = var.lambda_timeout_secs
  reserved_concurrent_executions = var.lambda_reserved_concurrency[each.key]

  tracing_config {
    mode = "PassThrough"
  }

  # Logs go to /aws/lambda/<function name>, the group created (with retention and KMS) in
  # logs.tf before the function exists.
  # Exactly the variables deployer_lambda::config::ENV_VARS reads (contract test enforced).
  environment {
    variables = {
      DROPSHIP_ALLOWED_BUCKETS        = aws_s3_bucket.artifacts.bucket
      DROPSHIP_APP_ROOT               = var.app_root
      DROPSHIP_APP_TAG_KEY            = var.app_tag_key
      DROPSHIP_ENV_TAG_KEY            = var.env_tag_key
      DROPSHIP_MAX_CONCURRENCY        = var.max_concurrency
      DROPSHIP_MAX_ERRORS             = var.max_errors
      DROPSHIP_DELIVERY_TIMEOUT_SECS  = tostring(var.delivery_timeout_secs)
      DROPSHIP_EXECUTION_TIMEOUT_SECS = tostring(var.execution_timeout_secs)
      DROPSHIP_LOG_GROUP              = aws_cloudwatch_log_group.command_output.name
      DROPSHIP_MAX_BUNDLE_BYTES       = tostring(var.max_bundle_bytes)
      DROPSHIP_LOCK_TIMEOUT_SECS      = tostring(var.lock_timeout_secs)
      DROPSHIP_INSTANCE_PROFILE_ARN   = local.host_profile_arn_template
      DROPSHIP_COMMAND_DOCUMENT       = aws_ssm_document.deploy[each.key].name
      DROPSHIP_ALLOWED_APPS           = join(",", var.apps)
      DROPSHIP_ALLOWED_ENVIRONMENTS   = join(",", each.value)
    }
  }

  tags = var.tags

  depends_on = [
    aws_iam_role_policy.lambda,
    aws_cloudwatch_log_group.lambda,
  ]
}

resource "aws_lambda_function_event_invoke_config" "deployer" {
  for_each = local.environment_classes

  function_name                = aws_lambda_function.deployer[each.key].function_name
  maximum_retry_attempts       = var.lambda_async_retry_attempts
  maximum_event_age_in_seconds = var.lambda_async_max_event_age_secs

  destination_config {
    on_failure {
      destination = aws_sqs_queue.failed_deploys.arn
    }
  }
}
