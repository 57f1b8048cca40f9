# Release rules, one per environment class: "Object Created" for the artifact bucket, keys
# releases/<app>/<env>.tar.gz of that class's environments only. EventBridge has no AND of
# prefix and suffix on one field, so a wildcard per environment expresses both:
# "<releases prefix>*/<env><bundle suffix>" (the contract test checks it against the key
# module, and that no key reaches the function of the other class).
resource "aws_cloudwatch_event_rule" "release_uploaded" {
  for_each = local.environment_classes

  name        = "${var.name_prefix}-release-uploaded-${each.key}"
  description = "dropship: a release bundle of ${join(", ", each.value)} was written to ${var.bucket_name}"

  event_pattern = jsonencode({
    source        = ["aws.s3"]
    "detail-type" = ["Object Created"]
    detail = {
      bucket = {
        name = [aws_s3_bucket.artifacts.bucket]
      }
      object = {
        key = [for e in each.value : { wildcard = "${local.releases_prefix}*/${e}${local.bundle_suffix}" }]
      }
    }
  })

  tags = var.tags
}

# The fleet loop (docs/architecture.md, "The fleet loop"). Every host's terminal command
# status of the class's own command document (aws_ssm_document.deploy): the Lambda stores
# the result and moves the rollout on (next wave, fleet rollback, settling and the
# notification). Statuses are the contract's TERMINAL_STATUSES. Other documents' commands
# (AWS-RunShellScript from anyone in the account) match no rule.
resource "aws_cloudwatch_event_rule" "host_finished" {
  for_each = local.environment_classes

  name        = "${var.name_prefix}-host-finished-${each.key}"
  description = "dropship: a host finished a ${aws_ssm_document.deploy[each.key].name} command"

  event_pattern = jsonencode({
    source        = ["aws.ssm"]
    "detail-type" = ["EC2 Command Invocation Status-change Notification"]
    detail = {
      "document-name" = [aws_ssm_document.deploy[each.key].name]
      status = [
        "Success", "Failed", "TimedOut", "Cancelled", "DeliveryTimedOut",
        "ExecutionTimedOut", "Undeliverable", "Terminated",
      ]
    }
  })

  tags = var.tags
}

# An instance entering `running`: if it carries an app/env's tags, it catches up to the
# version that fleet converged on. The event names no tag, so it reaches every function;
# each acts only on instances of its own environments.
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
# dispatch, or that were re-tagged into an app/env get its version within this period. Every
# function reconciles the fleets of its own environments.
resource "aws_cloudwatch_event_rule" "reconcile" {
  name                = "${var.name_prefix}-reconcile"
  description         = "dropship: every fleet sends its version to tagged instances it never reached"
  schedule_expression = "rate(${var.reconcile_minutes} minutes)"
  tags                = var.tags
}

locals {
  # Per rule kind and environment class, the rule that reaches that class's function: a
  # class's own release and host-result rules reach only its function; instance starts and
  # the reconcile reach every function.
  deployer_rules = {
    release_uploaded = aws_cloudwatch_event_rule.release_uploaded
    host_finished    = aws_cloudwatch_event_rule.host_finished
    instance_running = { for class, envs in local.environment_classes : class => aws_cloudwatch_event_rule.instance_running }
    reconcile        = { for class, envs in local.environment_classes : class => aws_cloudwatch_event_rule.reconcile }
  }
  # Every (rule, function) pair, keyed "<rule kind>/<class>".
  deployer_targets = {
    for pair in setproduct(keys(local.deployer_rules), keys(local.environment_classes)) :
    "${pair[0]}/${pair[1]}" => { rule = local.deployer_rules[pair[0]][pair[1]], class = pair[1] }
  }
}

resource "aws_cloudwatch_event_target" "deployer" {
  for_each  = local.deployer_targets
  rule      = each.value.rule.name
  target_id = "deployer-${each.value.class}"
  arn       = aws_lambda_function.deployer[each.value.class].arn

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
  for_each      = local.deployer_targets
  statement_id  = "Allow-${replace(each.key, "/", "-")}"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.deployer[each.value.class].function_name
  principal     = "events.amazonaws.com"
  source_arn    = each.value.rule.arn
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
        distinct([for t in values(local.deployer_targets) : t.rule.arn]),
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
