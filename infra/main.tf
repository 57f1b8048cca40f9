# Contract values shared with the Rust crates (dropship_contract::key). The infra contract
# test (tests/tests/infra_contract.rs) fails if these drift from the code.
locals {
  releases_prefix = "releases/"
  bundle_suffix   = ".tar.gz"
  records_prefix  = "deploy-records/"

  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition

  function_name        = "${var.name_prefix}-deployer"
  function_arn         = "arn:${local.partition}:lambda:${local.region}:${local.account_id}:function:${local.function_name}"
  lambda_log_group     = "/aws/lambda/${local.function_name}"
  command_output_group = "/${var.name_prefix}/ssm-command-output"

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
