# Contract values shared with the Rust crates (dropship_contract::key). The infra contract
# test (tests/tests/infra_contract.rs) fails if these drift from the code.
locals {
  releases_prefix = "releases/"
  bundle_suffix   = ".tar.gz"
  records_prefix  = "deploy-records/"

  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition

  command_output_group = "/${var.name_prefix}/ssm-command-output"

  # Environment classes (docs/architecture.md, "Isolation between environments"). Each class
  # with at least one environment gets its own deployer function (and reserved concurrency),
  # command document, release rule and host-result rule, so events of one class never take
  # the other's slots. Both functions share one role.
  environment_classes = {
    for class, envs in {
      production    = [for e in var.environments : e if contains(var.production_environments, e)]
      nonproduction = [for e in var.environments : e if !contains(var.production_environments, e)]
    } : class => envs if length(envs) > 0
  }
  function_names = {
    for class, envs in local.environment_classes : class => "${var.name_prefix}-deployer-${class}"
  }
  function_arns = {
    for class, name in local.function_names : class => "arn:${local.partition}:lambda:${local.region}:${local.account_id}:function:${name}"
  }
  lambda_log_groups = {
    for class, name in local.function_names : class => "/aws/lambda/${name}"
  }
  # dropship_contract::wiring::COMMAND_DOCUMENT_INFIX: "<name_prefix>-deploy-<class>".
  command_document_names = {
    for class, envs in local.environment_classes : class => "${var.name_prefix}-deploy-${class}"
  }

  log_group_arn_prefix = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group"

  # Every (app, env) this installation deploys, keyed "app/env". Each gets its own release
  # key, uploader policy, optional GitHub role, host instance profile and bucket-policy
  # statement: rights never span two environments.
  app_envs = {
    for pair in setproduct(var.apps, var.environments) :
    "${pair[0]}/${pair[1]}" => { app = pair[0], env = pair[1] }
  }

  # Host instance profiles: one per (app, env). The Lambda receives the same name as a
  # template ({app}, {env}) and dispatches only to instances carrying the profile of the
  # release's own app and environment. "." cannot occur in app or env names, so
  # "<app>.<env>" is unambiguous.
  host_profile_name_template = "${var.name_prefix}-host-{app}.{env}"
  host_profile_arn_template  = "arn:${local.partition}:iam::${local.account_id}:instance-profile/${local.host_profile_name_template}"

  # Who may change the bucket's protections (versioning, lifecycle, policy, notifications,
  # logging) and, in the SCP / permissions-boundary snippets, dropship tags and host
  # profiles. Default: the role or user running this Terraform.
  provisioning_principal_arns = coalescelist(var.provisioning_principal_arns, [data.aws_iam_session_context.current.issuer_arn])
}

data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

data "aws_partition" "current" {}

# The IAM role (not the temporary session) behind the credentials running Terraform.
data "aws_iam_session_context" "current" {
  arn = data.aws_caller_identity.current.arn
}

# The SCP and permissions-boundary snippets (policies/*.json, valid JSON with @PLACEHOLDER@
# strings), rendered for this installation and offered as outputs.
locals {
  target_protection_policies = {
    for name in ["scp", "permissions-boundary"] : name => jsonencode(jsondecode(
      replace(replace(replace(replace(replace(replace(
        file("${path.module}/policies/dropship-targets-${name}.json"),
        "\"@PROVISIONING_PRINCIPAL_ARNS@\"", jsonencode(local.provisioning_principal_arns)),
        "@PARTITION@", local.partition),
        "@ACCOUNT_ID@", local.account_id),
        "@NAME_PREFIX@", var.name_prefix),
        "@APP_TAG_KEY@", var.app_tag_key),
      "@ENV_TAG_KEY@", var.env_tag_key)
    ))
  }
}
