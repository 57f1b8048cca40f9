locals {
  bucket_arn          = aws_s3_bucket.artifacts.arn
  instance_arn_prefix = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance"

  github_oidc_enabled      = length(var.github_oidc_subjects) > 0
  create_github_oidc       = local.github_oidc_enabled && var.github_oidc_provider_arn == null
  github_oidc_provider_arn = local.create_github_oidc ? aws_iam_openid_connect_provider.github[0].arn : var.github_oidc_provider_arn

  # Per (app, env): the host role/profile name and the exact release key of that pair.
  host_names = {
    for k, v in local.app_envs : k => replace(replace(local.host_profile_name_template, "{app}", v.app), "{env}", v.env)
  }
  release_object_arns = {
    for k, v in local.app_envs : k => "${local.bucket_arn}/${local.releases_prefix}${v.app}/${v.env}${local.bundle_suffix}"
  }

  # Promotion: { <to env> = <from env> } (var.promotions; default each environment from the
  # one listed before it), then per target pair "app/to" the source pair "app/from" of the
  # same app, for environments this installation deploys.
  promotions = var.promotions != null ? var.promotions : {
    for i, env in var.environments : env => var.environments[i - 1] if i > 0
  }
  promotion_sources = {
    for k, v in local.app_envs : k => "${v.app}/${local.promotions[v.env]}"
    if contains(keys(local.promotions), v.env) && contains(var.environments, lookup(local.promotions, v.env, ""))
  }
}

# ---------------------------------------------------------------------------------------
# Deployer Lambda. Actions = deployer_lambda::aws_calls::IAM_ACTIONS (what the code calls)
# + deployer_lambda::aws_calls::PLATFORM_ACTIONS (the Lambda service shipping the function's
# logs) + sqs:SendMessage, used by the Lambda service for the on-failure destination
# configured here (lambda_async_destination below). The contract test enforces all three.
# ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name               = "${var.name_prefix}-deployer-lambda"
  description        = "dropship deployer Lambda: read releases, write deploy records, run the host script on tagged instances"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "lambda" {
  statement {
    sid       = "ReadReleaseVersions"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${local.bucket_arn}/${local.releases_prefix}*"]
  }

  statement {
    sid       = "ReadWriteDeployRecords"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${local.bucket_arn}/${local.records_prefix}*"]
  }

  # Without s3:ListBucket, S3 answers 403 instead of 404 for a record that does not exist
  # yet, and the first deploy of every version would fail. A GET of a missing key carries no
  # s3:prefix, so this grant cannot be narrowed with a prefix condition.
  statement {
    sid       = "MissingRecordsAre404"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
  }

  statement {
    sid       = "FindTargetInstances"
    actions   = ["ec2:DescribeInstances"]
    resources = ["*"] # DescribeInstances supports no resource-level restriction.
  }

  # Only dropship's own command documents (ssm.tf): never AWS-RunShellScript or any other.
  statement {
    sid       = "DropshipCommandDocumentsOnly"
    actions   = ["ssm:SendCommand"]
    resources = [for d in aws_ssm_document.deploy : d.arn]
  }

  statement {
    sid       = "OnlyTaggedInstances"
    actions   = ["ssm:SendCommand"]
    resources = ["${local.instance_arn_prefix}/*"]

    condition {
      test     = "StringEquals"
      variable = "ssm:resourceTag/${var.app_tag_key}"
      values   = var.apps
    }

    condition {
      test     = "StringEquals"
      variable = "ssm:resourceTag/${var.env_tag_key}"
      values   = var.environments
    }
  }

  # Command status: after an interrupted attempt the Lambda lists the commands it already
  # sent for a version (and their status) so it never sends one twice.
  statement {
    sid       = "ReadCommandStatus"
    actions   = ["ssm:ListCommands"]
    resources = ["*"] # ListCommands supports no resource-level restriction.
  }

  # The fleet loop: which targets are online, and each host's result once SSM reports it
  # finished. Neither action supports resource-level restrictions.
  statement {
    sid       = "OnlineTargetsAndHostResults"
    actions   = ["ssm:DescribeInstanceInformation", "ssm:GetCommandInvocation"]
    resources = ["*"]
  }

  # The one "Dropship Deployment Finished" event per deploy, on the default bus, with
  # dropship's own source only.
  statement {
    sid       = "DeployFinishedEvents"
    actions   = ["events:PutEvents"]
    resources = ["arn:${local.partition}:events:${local.region}:${local.account_id}:event-bus/default"]

    condition {
      test     = "StringEquals"
      variable = "events:source"
      values   = [local.deploy_finished_source]
    }
  }

  statement {
    sid       = "OwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for g in aws_cloudwatch_log_group.lambda : "${g.arn}:*"]
  }

  # The role's credentials work only in the deployer functions' own code (one per
  # environment class). Lambda puts the
  # calling function's ARN (lambda:SourceFunctionArn) into every request made with
  # credentials from inside an execution environment, so a function someone else creates
  # with this role (lambda:CreateFunction + iam:PassRole) is refused everything here. Calls
  # the Lambda service makes itself (the on-failure destination's sqs:SendMessage) carry no
  # such key and are unaffected (the Null test). The function ARNs are built from their
  # names: referring to the functions would make a cycle (they depend on this policy).
  statement {
    sid       = "OnlyTheDeployerFunctionUsesThisRole"
    effect    = "Deny"
    actions   = ["*"]
    resources = ["*"]

    condition {
      test     = "Null"
      variable = "lambda:SourceFunctionArn"
      values   = ["false"]
    }

    condition {
      test     = "ArnNotEquals"
      variable = "lambda:SourceFunctionArn"
      values   = values(local.function_arns)
    }
  }
}

resource "aws_iam_role_policy" "lambda" {
  name   = "deployer"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda.json
}

data "aws_iam_policy_document" "lambda_async_destination" {
  statement {
    sid       = "OnFailureDestination"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.failed_deploys.arn]
  }
}

resource "aws_iam_role_policy" "lambda_async_destination" {
  name   = "async-on-failure-destination"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda_async_destination.json
}

# ---------------------------------------------------------------------------------------
# Target hosts, one role + instance profile per (app, env): the SSM agent, writing Run
# Command output to the output log group, and reading versions of exactly their pair's release
# key (dropship_contract::host::HOST_IAM_ACTIONS): the host script downloads the version the
# command names with this role, so the command carries no credential. The profile is what the Lambda requires of a target
# besides its tags (DROPSHIP_INSTANCE_PROFILE_ARN): tags can be set by anyone with
# ec2:CreateTags, attaching a profile needs iam:PassRole on its role.
# ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "host_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "host" {
  for_each = local.app_envs

  name               = local.host_names[each.key]
  description        = "dropship target hosts of ${each.value.app}/${each.value.env}: SSM managed instance, Run Command output logs, download of its release key"
  assume_role_policy = data.aws_iam_policy_document.host_assume.json
  tags               = var.tags

  lifecycle {
    precondition {
      condition     = length(local.host_names[each.key]) <= 64
      error_message = "Host role name \"${local.host_names[each.key]}\" is longer than IAM's 64 characters: shorten name_prefix, the app or the environment name."
    }
  }
}

resource "aws_iam_role_policy_attachment" "host_ssm_core" {
  for_each = local.app_envs

  role       = aws_iam_role.host[each.key].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "host_command_output" {
  statement {
    sid       = "FindOutputGroup"
    actions   = ["logs:DescribeLogGroups"]
    resources = ["${local.log_group_arn_prefix}:*"]
  }

  statement {
    sid       = "WriteCommandOutput"
    actions   = ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.command_output.arn}:*"]
  }
}

resource "aws_iam_role_policy" "host_command_output" {
  for_each = local.app_envs

  name   = "ssm-command-output"
  role   = aws_iam_role.host[each.key].id
  policy = data.aws_iam_policy_document.host_command_output.json
}

data "aws_iam_policy_document" "host_release" {
  for_each = local.app_envs

  statement {
    sid       = "ReadVersionsOfTheReleaseKey"
    actions   = ["s3:GetObjectVersion"]
    resources = [local.release_object_arns[each.key]]
  }
}

resource "aws_iam_role_policy" "host_release" {
  for_each = local.app_envs

  name   = "dropship-release-download"
  role   = aws_iam_role.host[each.key].id
  policy = data.aws_iam_policy_document.host_release[each.key].json
}

resource "aws_iam_instance_profile" "host" {
  for_each = local.app_envs

  name = local.host_names[each.key]
  role = aws_iam_role.host[each.key].name
  tags = var.tags
}

# ---------------------------------------------------------------------------------------
# Uploader, one policy per (app, env). Actions = dropship_bundler::aws_calls::IAM_ACTIONS
# + dropship_operator::aws_calls::IAM_ACTIONS (contract test). Every object right is on the exact release key of that pair and its
# deploy records, so a staging credential cannot upload or restore to production, nor write
# any other key. Restore is CopyObject of an old version of the same key onto it:
# GetObjectVersion on the source + PutObject on the destination, both on that key. Promote
# (to this pair, from local.promotion_sources) is CopyObject from the source pair's key: the
# same PutObject on this key, plus reads of the source key, its history and its deploy records
# (to check the version deployed everywhere there); never a write outside this pair.
# ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "uploader" {
  for_each = local.app_envs

  statement {
    sid       = "WriteTheReleaseKey"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = [local.release_object_arns[each.key]]
  }

  statement {
    sid     = "ReadTheReleaseKeyAndItsDeployRecords"
    actions = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = [
      local.release_object_arns[each.key],
      "${local.bucket_arn}/${local.records_prefix}${each.value.app}/${each.value.env}/*",
    ]
  }

  # versions / restore: ListObjectVersions with the release key itself as the prefix.
  statement {
    sid       = "ListTheReleaseKeyHistory"
    actions   = ["s3:ListBucketVersions"]
    resources = [local.bucket_arn]

    condition {
      test     = "StringEquals"
      variable = "s3:prefix"
      values   = ["${local.releases_prefix}${each.value.app}/${each.value.env}${local.bundle_suffix}"]
    }
  }

  # status / --wait / versions: ListObjectsV2 under this pair's deploy records (the whole
  # prefix, or one record key as the prefix).
  statement {
    sid       = "ListTheDeployRecords"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.records_prefix}${each.value.app}/${each.value.env}/*"]
    }
  }

  # promote <from> <this env>: read the source pair's key, history and deploy records.
  dynamic "statement" {
    for_each = contains(keys(local.promotion_sources), each.key) ? [local.promotion_sources[each.key]] : []
    content {
      sid     = "ReadThePromotionSource"
      actions = ["s3:GetObject", "s3:GetObjectVersion"]
      resources = [
        local.release_object_arns[statement.value],
        "${local.bucket_arn}/${local.records_prefix}${statement.value}/*",
      ]
    }
  }

  dynamic "statement" {
    for_each = contains(keys(local.promotion_sources), each.key) ? [local.promotion_sources[each.key]] : []
    content {
      sid       = "ListThePromotionSourceHistory"
      actions   = ["s3:ListBucketVersions"]
      resources = [local.bucket_arn]

      condition {
        test     = "StringEquals"
        variable = "s3:prefix"
        values   = ["${local.releases_prefix}${statement.value}${local.bundle_suffix}"]
      }
    }
  }

  dynamic "statement" {
    for_each = contains(keys(local.promotion_sources), each.key) ? [local.promotion_sources[each.key]] : []
    content {
      sid       = "ListThePromotionSourceRecords"
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arn]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${local.records_prefix}${statement.value}/*"]
      }
    }
  }

  statement {
    sid       = "CheckVersioning"
    actions   = ["s3:GetBucketVersioning"]
    resources = [local.bucket_arn]
  }
  # No ssm:GetCommandInvocation: it cannot be limited to one app's commands, and `status` /
  # `--wait` read each host's result from this pair's deploy records (the Lambda stores them).

  # dropship doctor: is the bucket sending its events to EventBridge. Its account-wide checks
  # (rules, instances, SSM registration) and `dropship logs` (one output group for every app)
  # cannot be limited to this pair: they need an operator role (docs/operations-cli.md).
  statement {
    sid       = "CheckBucketNotifications"
    actions   = ["s3:GetBucketNotification"]
    resources = [local.bucket_arn]
  }
}

resource "aws_iam_policy" "uploader" {
  for_each = local.app_envs

  name        = "${var.name_prefix}-uploader-${each.value.app}.${each.value.env}"
  description = "dropship: upload, inspect and restore releases of ${each.value.app}/${each.value.env}"
  policy      = data.aws_iam_policy_document.uploader[each.key].json
  tags        = var.tags
}

# ---------------------------------------------------------------------------------------
# Optional GitHub Actions OIDC roles, one per (app, env), each trusting exactly the subjects
# listed for that pair (StringEquals: no wildcards), so only a job running in that GitHub
# environment (with its reviewers and branch rules) can assume it.
# ---------------------------------------------------------------------------------------

resource "aws_iam_openid_connect_provider" "github" {
  count = local.create_github_oidc ? 1 : 0

  url             = "https://token.actions.githubusercontent.com"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = ["6938fd4d98bab03faadb97b34396831e3780aea1", "1c58a3a8518e8759bf075b76b750d4f2df264fcd"]
  tags            = var.tags
}

data "aws_iam_policy_document" "github_assume" {
  for_each = var.github_oidc_subjects

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.github_oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = each.value
    }
  }
}

resource "aws_iam_role" "github" {
  for_each = var.github_oidc_subjects

  name                 = "${var.name_prefix}-github-${replace(each.key, "/", ".")}"
  description          = "dropship: GitHub Actions upload role for ${each.key}"
  assume_role_policy   = data.aws_iam_policy_document.github_assume[each.key].json
  max_session_duration = 3600
  tags                 = var.tags

  lifecycle {
    precondition {
      condition     = contains(keys(local.app_envs), each.key)
      error_message = "github_oidc_subjects key \"${each.key}\" is not \"<app>/<env>\" with the app in var.apps and the env in var.environments."
    }
    precondition {
      condition     = length("${var.name_prefix}-github-${replace(each.key, "/", ".")}") <= 64
      error_message = "GitHub role name for ${each.key} is longer than IAM's 64 characters: shorten name_prefix, the app or the environment name."
    }
  }
}

resource "aws_iam_role_policy_attachment" "github_uploader" {
  for_each = var.github_oidc_subjects

  role       = aws_iam_role.github[each.key].name
  policy_arn = aws_iam_policy.uploader[each.key].arn
}
