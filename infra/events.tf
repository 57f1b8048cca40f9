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

# The fleet loop (docs/architecture.md, "The fleet loop"). Every host's terminal command
# status: the Lambda stores the result and moves the rollout on (next wave, fleet rollback,
# settling and the notification). Statuses are the contract's TERMINAL_STATUSES.
resource "aws_cloudwatch_event_rule" "host_finished" {
  name        = "${var.name_prefix}-host-finished"
  description = "dropship: a host finished an AWS-RunShellScript command"

  event_pattern = jsonencode({
    source        = ["aws.ssm"]
    "detail-type" = ["EC2 Command Invocation Status-change Notification"]
    detail = {
      "document-name" = ["AWS-RunShellScript"]
      status = [
        "Success", "Failed", "TimedOut", "Cancelled", "DeliveryTimedOut",
        "ExecutionTimedOut", "Undeliverable", "Terminated",
      ]
    }
  })

  tags = var.tags
}

# An instance entering `running`: if it carries an app/env's tags, it catches up to the
# version that fleet converged on.
resource "aws_cloudwatch_event_rule" "instance_running" {
  name        = "${var.name_prefix}-instance-running"
  description = "dropship: an instance started; tagged ones catch up to their fleet's version"

  event_pattern = jsonencode({
    source        = ["aws.ec2"]
    "detail-type" = ["EC2 Instance State-change Notification"]
    detail = {
      state = ["running"]
    }
  })

  tags = var.tags
}

# The periodic reconcile: instances whose agent registered late, that were offline at
# dispatch, or that were re-tagged into an app/env get its version within this period.
resource "aws_cloudwatch_event_rule" "reconcile" {
  name                = "${var.name_prefix}-reconcile"
  description         = "dropship: every fleet sends its version to tagged instances it never reached"
  schedule_expression = "rate(${var.reconcile_minutes} minutes)"
  tags                = var.tags
}

locals {
  # Every rule whose target is the deployer Lambda (the release rule has its own resources).
  fleet_rules = {
    host_finished    = aws_cloudwatch_event_rule.host_finished
    instance_running = aws_cloudwatch_event_rule.instance_running
    reconcile        = aws_cloudwatch_event_rule.reconcile
  }
}

resource "aws_cloudwatch_event_target" "fleet" {
  for_each  = local.fleet_rules
  rule      = each.value.name
  target_id = "deployer-lambda"
  arn       = aws_lambda_function.deployer.arn

  retry_policy {
    maximum_retry_attempts       = var.event_retry_attempts
    maximum_event_age_in_seconds = var.event_max_age_secs
  }

  dead_letter_config {
    arn = aws_sqs_queue.events_dlq.arn
  }
}

resource "aws_lambda_permission" "fleet" {
  for_each      = local.fleet_rules
  statement_id  = "Allow-${each.key}"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.deployer.function_name
  principal     = "events.amazonaws.com"
  source_arn    = each.value.arn
}

# Dead-letter queue of the rules' targets (the release rule, the fleet rules and the
# failure-notification rule).
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
      values = concat(
        [aws_cloudwatch_event_rule.release_uploaded.arn],
        [for r in local.fleet_rules : r.arn],
        aws_cloudwatch_event_rule.deploy_failed[*].arn,
      )
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
