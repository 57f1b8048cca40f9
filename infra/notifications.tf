# Failure notifications. The deployer emits one "Dropship Deployment Finished" event per
# deploy on the account's default EventBridge bus (contract: docs/architecture.md, "Events
# dropship emits"); this rule forwards the failed ones of this installation's bucket to an
# optional SNS topic and to any targets the user passes.
locals {
  deploy_finished_source      = "dropship"
  deploy_finished_detail_type = "Dropship Deployment Finished"

  failure_notifications_enabled = var.failure_topic_enabled || length(var.failure_notification_targets) > 0
}

resource "aws_cloudwatch_event_rule" "deploy_failed" {
  count = local.failure_notifications_enabled ? 1 : 0

  name        = "${var.name_prefix}-deploy-failed"
  description = "dropship: a deploy from ${var.bucket_name} finished without succeeding on every host"

  event_pattern = jsonencode({
    source        = [local.deploy_finished_source]
    "detail-type" = [local.deploy_finished_detail_type]
    detail = {
      bucket    = [aws_s3_bucket.artifacts.bucket]
      succeeded = [false]
    }
  })

  tags = var.tags
}

# The module's topic: KMS-encrypted with a key EventBridge may use for this topic.
resource "aws_kms_key" "notifications" {
  count = var.failure_topic_enabled ? 1 : 0

  description             = "${var.name_prefix}: SNS encryption of the deploy-failure topic"
  deletion_window_in_days = 30
  enable_key_rotation     = true
  policy                  = data.aws_iam_policy_document.notifications_key.json
  tags                    = var.tags
}

data "aws_iam_policy_document" "notifications_key" {
  #checkov:skip=CKV_AWS_109:Key policy root statement; in a key policy "*" means this key only, and access is delegated to IAM in this account.
  #checkov:skip=CKV_AWS_111:Key policy root statement; in a key policy "*" means this key only, and access is delegated to IAM in this account.
  #checkov:skip=CKV_AWS_356:Key policy resource is always "*" (the key itself); the statements are limited to this account's principals and EventBridge.
  statement {
    sid       = "AccountAdministersKeyThroughIam"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # EventBridge encrypts what it publishes to the topic (SNS decrypts it to deliver).
  statement {
    sid       = "EventBridgePublishesToTheFailureTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
  }
}

resource "aws_sns_topic" "deploy_failures" {
  count = var.failure_topic_enabled ? 1 : 0

  name              = "${var.name_prefix}-deploy-failures"
  kms_master_key_id = aws_kms_key.notifications[0].arn
  tags              = var.tags
}

data "aws_iam_policy_document" "deploy_failures_topic" {
  count = var.failure_topic_enabled ? 1 : 0

  statement {
    sid       = "OnlyTheFailureRulePublishes"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.deploy_failures[0].arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.deploy_failed[0].arn]
    }
  }
}

resource "aws_sns_topic_policy" "deploy_failures" {
  count = var.failure_topic_enabled ? 1 : 0

  arn    = aws_sns_topic.deploy_failures[0].arn
  policy = data.aws_iam_policy_document.deploy_failures_topic[0].json
}

resource "aws_cloudwatch_event_target" "deploy_failures_topic" {
  count = var.failure_topic_enabled ? 1 : 0

  rule      = aws_cloudwatch_event_rule.deploy_failed[0].name
  target_id = "failure-topic"
  arn       = aws_sns_topic.deploy_failures[0].arn

  # AWS Chatbot renders "custom notifications" (version/source/content); without this the
  # topic carries the raw event, for machines and webhooks.
  dynamic "input_transformer" {
    for_each = var.failure_topic_chat_format ? [1] : []
    content {
      input_paths = {
        app      = "$.detail.app"
        env      = "$.detail.env"
        outcome  = "$.detail.outcome"
        commit   = "$.detail.commit"
        branch   = "$.detail.branch"
        version  = "$.detail.version_id"
        uploader = "$.detail.uploader"
        record   = "$.detail.record_key"
      }
      input_template = <<-EOT
        {"version": "1.0", "source": "custom", "content": {"textType": "client-markdown", "title": "dropship: <app>/<env> deploy <outcome>", "description": "Commit `<commit>` (<branch>) uploaded by <uploader>, S3 version `<version>`. Per-host results: `<record>` (or `dropship status <version>`)."}}
      EOT
    }
  }

  retry_policy {
    maximum_retry_attempts       = var.event_retry_attempts
    maximum_event_age_in_seconds = var.event_max_age_secs
  }

  dead_letter_config {
    arn = aws_sqs_queue.events_dlq.arn
  }
}

resource "aws_cloudwatch_event_target" "deploy_failures_extra" {
  count = length(var.failure_notification_targets)

  rule      = aws_cloudwatch_event_rule.deploy_failed[0].name
  target_id = "failure-target-${count.index}"
  arn       = var.failure_notification_targets[count.index].arn
  role_arn  = var.failure_notification_targets[count.index].role_arn

  retry_policy {
    maximum_retry_attempts       = var.event_retry_attempts
    maximum_event_age_in_seconds = var.event_max_age_secs
  }

  dead_letter_config {
    arn = aws_sqs_queue.events_dlq.arn
  }
}
