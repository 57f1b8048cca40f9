# Customer-managed key for the two log groups: command output can contain application
# details, so it is encrypted with a key this account controls and rotates.
resource "aws_kms_key" "logs" {
  description             = "${var.name_prefix}: CloudWatch Logs encryption (deployer Lambda, SSM command output)"
  deletion_window_in_days = 30
  enable_key_rotation     = true
  policy                  = data.aws_iam_policy_document.logs_key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "logs" {
  name          = "alias/${var.name_prefix}-logs"
  target_key_id = aws_kms_key.logs.key_id
}

data "aws_iam_policy_document" "logs_key" {
  # Key policy: the account administers the key through IAM (the standard root statement);
  # CloudWatch Logs may use it only for this installation's log groups.
  #checkov:skip=CKV_AWS_109:Key policy root statement; in a key policy "*" means this key only, and access is delegated to IAM in this account.
  #checkov:skip=CKV_AWS_111:Key policy root statement; in a key policy "*" means this key only, and access is delegated to IAM in this account.
  #checkov:skip=CKV_AWS_356:Key policy resource is always "*" (the key itself); the statement is limited to this account's principals.
  statement {
    sid       = "AccountAdministersKeyThroughIam"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsForDropshipGroups"
    actions = [
      "kms:Encrypt",
      "kms:Decrypt",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values = concat(
        [for g in values(local.lambda_log_groups) : "${local.log_group_arn_prefix}:${g}"],
        ["${local.log_group_arn_prefix}:${local.command_output_group}"],
      )
    }
  }
}

resource "aws_cloudwatch_log_group" "lambda" {
  for_each = local.lambda_log_groups

  name              = each.value
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = var.tags
}

# SSM Run Command output (CloudWatchOutputConfig), written by the SSM agent on each host
# with the instance profile's credentials.
resource "aws_cloudwatch_log_group" "command_output" {
  name              = local.command_output_group
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = var.tags
}
