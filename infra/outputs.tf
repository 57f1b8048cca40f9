output "bucket_name" {
  description = "Artifact bucket (set it as `bucket` in each app's dropship.toml)."
  value       = aws_s3_bucket.artifacts.bucket
}

output "bucket_arn" {
  description = "ARN of the artifact bucket."
  value       = aws_s3_bucket.artifacts.arn
}

output "lambda_function_name" {
  description = "Name of the deployer Lambda."
  value       = aws_lambda_function.deployer.function_name
}

output "lambda_function_arn" {
  description = "ARN of the deployer Lambda."
  value       = aws_lambda_function.deployer.arn
}

output "lambda_role_arn" {
  description = "Execution role of the deployer Lambda."
  value       = aws_iam_role.lambda.arn
}

output "lambda_log_group" {
  description = "CloudWatch log group of the deployer Lambda."
  value       = aws_cloudwatch_log_group.lambda.name
}

output "command_output_log_group" {
  description = "CloudWatch log group receiving SSM Run Command output from hosts."
  value       = aws_cloudwatch_log_group.command_output.name
}

output "event_rule_name" {
  description = "EventBridge rule matching release uploads."
  value       = aws_cloudwatch_event_rule.release_uploaded.name
}

output "events_dlq_url" {
  description = "SQS dead-letter queue of the EventBridge target (events that never reached the Lambda)."
  value       = aws_sqs_queue.events_dlq.id
}

output "failed_deploys_queue_url" {
  description = "SQS on-failure destination of the Lambda (invocations that failed after retries)."
  value       = aws_sqs_queue.failed_deploys.id
}

output "instance_profile_name" {
  description = "Instance profile to attach to target instances."
  value       = aws_iam_instance_profile.instance.name
}

output "instance_role_name" {
  description = "Role inside the instance profile (attach extra app policies here if the app needs them)."
  value       = aws_iam_role.instance.name
}

output "uploader_policy_arns" {
  description = "Per app, the managed policy for whoever uploads that app (CI user or role)."
  value       = { for app, p in aws_iam_policy.uploader : app => p.arn }
}

output "github_role_arns" {
  description = "Per app in github_oidc_subjects, the role GitHub Actions assumes."
  value       = { for app, r in aws_iam_role.github : app => r.arn }
}

output "logs_kms_key_arn" {
  description = "KMS key encrypting both log groups."
  value       = aws_kms_key.logs.arn
}
