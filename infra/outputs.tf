output "bucket_name" {
  description = "Artifact bucket (set it as `bucket` in each app's dropship.toml)."
  value       = aws_s3_bucket.artifacts.bucket
}

output "bucket_arn" {
  description = "ARN of the artifact bucket."
  value       = aws_s3_bucket.artifacts.arn
}

output "lambda_function_names" {
  description = "Per environment class (production, nonproduction), the name of its deployer Lambda."
  value       = { for k, f in aws_lambda_function.deployer : k => f.function_name }
}

output "lambda_function_arns" {
  description = "Per environment class, the ARN of its deployer Lambda."
  value       = { for k, f in aws_lambda_function.deployer : k => f.arn }
}

output "lambda_role_arn" {
  description = "Execution role of the deployer Lambdas (one role for both classes)."
  value       = aws_iam_role.lambda.arn
}

output "lambda_log_groups" {
  description = "Per environment class, the CloudWatch log group of its deployer Lambda."
  value       = { for k, g in aws_cloudwatch_log_group.lambda : k => g.name }
}

output "command_output_log_group" {
  description = "CloudWatch log group receiving SSM Run Command output from hosts."
  value       = aws_cloudwatch_log_group.command_output.name
}

output "event_rule_names" {
  description = "Per environment class, the EventBridge rule matching release uploads of its environments."
  value       = { for k, r in aws_cloudwatch_event_rule.release_uploaded : k => r.name }
}

output "command_document_names" {
  description = "Per environment class, dropship's SSM Command document every deploy command runs (the host-result rule matches it)."
  value       = { for k, d in aws_ssm_document.deploy : k => d.name }
}

output "events_dlq_url" {
  description = "SQS dead-letter queue of the EventBridge targets (events that never reached the Lambda or a notification target)."
  value       = aws_sqs_queue.events_dlq.id
}

output "failed_deploys_queue_url" {
  description = "SQS on-failure destination of the Lambda (invocations that failed after retries)."
  value       = aws_sqs_queue.failed_deploys.id
}

output "host_instance_profile_names" {
  description = "Per \"<app>/<env>\", the instance profile its target hosts must carry (besides the dropship tags): the Lambda sends nothing to an instance with another profile."
  value       = { for k, p in aws_iam_instance_profile.host : k => p.name }
}

output "host_instance_profile_arns" {
  description = "Per \"<app>/<env>\", the ARN of that instance profile (what DescribeInstances reports as IamInstanceProfile.Arn)."
  value       = { for k, p in aws_iam_instance_profile.host : k => p.arn }
}

output "host_role_names" {
  description = "Per \"<app>/<env>\", the role inside the host instance profile (attach extra app policies here if the app needs them)."
  value       = { for k, r in aws_iam_role.host : k => r.name }
}

output "uploader_policy_arns" {
  description = "Per \"<app>/<env>\", the managed policy for whoever uploads and restores that pair (CI user or role; also list it in uploader_principal_arns)."
  value       = { for k, p in aws_iam_policy.uploader : k => p.arn }
}

output "github_role_arns" {
  description = "Per \"<app>/<env>\" in github_oidc_subjects, the role the GitHub job of that environment assumes."
  value       = { for k, r in aws_iam_role.github : k => r.arn }
}

output "target_protection_scp" {
  description = "Service control policy (JSON, from policies/dropship-targets-scp.json) for the account's OU: only the provisioning principals may change dropship tags, pass the host roles, attach or change the host instance profiles, change dropship's roles and policies, change or recreate the deployer function or pass its role, or change dropship's EventBridge rules."
  value       = local.target_protection_policies["scp"]
}

output "target_protection_permissions_boundary" {
  description = "Permissions boundary (JSON, from policies/dropship-targets-permissions-boundary.json) for every other role and user that may manage EC2 or IAM in this account, when SCPs are not available. Create it as the policy \"<name_prefix>-targets-boundary\"."
  value       = local.target_protection_policies["permissions-boundary"]
}

output "failure_topic_arn" {
  description = "SNS topic receiving failed deploys' events (failure_topic_enabled), or null."
  value       = one(aws_sns_topic.deploy_failures[*].arn)
}

output "failure_rule_name" {
  description = "EventBridge rule (default bus) matching failed deploys of this installation, or null when no notification target is configured."
  value       = one(aws_cloudwatch_event_rule.deploy_failed[*].name)
}

output "logs_kms_key_arn" {
  description = "KMS key encrypting both log groups."
  value       = aws_kms_key.logs.arn
}

output "fleet_rule_names" {
  description = "EventBridge rules of the fleet loop: host results (per environment class, host_finished/<class>), instances starting, the reconcile schedule."
  value = merge(
    { for k, r in aws_cloudwatch_event_rule.host_finished : "host_finished/${k}" => r.name },
    {
      instance_running = aws_cloudwatch_event_rule.instance_running.name
      reconcile        = aws_cloudwatch_event_rule.reconcile.name
    },
  )
}
