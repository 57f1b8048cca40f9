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
  lambda_log_group     = "/aws/lambda/${local.function_name}"
  command_output_group = "/${var.name_prefix}/ssm-command-output"

  log_group_arn_prefix = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group"
}

data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

data "aws_partition" "current" {}
