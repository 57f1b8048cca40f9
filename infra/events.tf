# One rule: "Object Created" for the artifact bucket, keys releases/…/*.tar.gz. EventBridge
# has no AND of prefix and suffix on one field, so the wildcard pattern expresses both:
# "<releases prefix>*<bundle suffix>" (the contract test checks it against the key module).
resource "aws_cloudwatch_event_rule" "release_uploaded" {
  name        = "${var.name_prefix}-release-uploaded"
  description = "dropship: a release bundle was written to ${var.bucket_name}"

  event_pattern = jsonencode({
    source        = ["aws.s3"]
    "detail-type" = ["Object Created"]
    detail = {
      bucket = {
        name = [aws_s3_bucket.artifacts.bucket]
      }
      object = {
        key = [{ wildcard = "${local.releases_prefix}*${local.bundle_suffix}" }]
      }
    }
  })

  tags = var.tags
}

resource "aws_cloudwatch_event_target" "deployer" {
  rule      = aws_cloudwatch_event_rule.release_uploaded.name
  target_id = "deployer-lambda"
  arn       = aws_lambda_function.deployer.arn

  retry_policy {
    maximum_retry_attempts       = var.event_retry_attempts
    maximum_event_age_in_seconds = var.event_max_age_secs
  }

  # Events EventBridge could not deliver to the Lambda (throttled, deleted, no permission).
  dead_letter_config {
    arn = aws_sqs_queue.events_dlq.arn
  }
}

resource "aws_lambda_permission" "events" {
  statement_id  = "AllowReleaseRule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.deployer.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.release_uploaded.arn
}

# Dead-letter queue of the rules' targets (the release rule and the failure-notification rule).
resource "aws_sqs_queue" "events_dlq" {
  name                      = "${var.name_prefix}-events-dlq"
  message_retention_seconds = var.queue_retention_secs
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

data "aws_iam_policy_document" "events_dlq" {
  statement {
    sid       = "RuleDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.events_dlq.arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = concat([aws_cloudwatch_event_rule.release_uploaded.arn], aws_cloudwatch_event_rule.deploy_failed[*].arn)
    }
  }
}

resource "aws_sqs_queue_policy" "events_dlq" {
  queue_url = aws_sqs_queue.events_dlq.id
  policy    = data.aws_iam_policy_document.events_dlq.json
}

# Asynchronous invocations the Lambda failed after its retries (or that aged out); the
# message carries the original event plus the error, so nothing is lost silently.
resource "aws_sqs_queue" "failed_deploys" {
  name                      = "${var.name_prefix}-failed-deploys"
  message_retention_seconds = var.queue_retention_secs
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}
