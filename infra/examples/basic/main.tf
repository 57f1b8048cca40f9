# Minimal root: one bucket, one deployer, two apps in two environments; GitHub OIDC upload
# roles for "shop" (one per environment), a plain-CI uploader for "blog", failure
# notifications to an SNS topic.
#
#   scripts/package-lambda            (from the repository root: builds the Lambda zip)
#   terraform init && terraform plan -var bucket_name=acme-dropship-artifacts

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "managed-by" = "terraform"
      "project"    = "dropship"
    }
  }
}

module "dropship" {
  source = "../.."

  bucket_name       = var.bucket_name
  apps              = ["shop", "blog"]
  environments      = ["staging", "production"]
  lambda_zip_path   = var.lambda_zip_path
  access_log_bucket = var.access_log_bucket

  # The deploy workflow (infra/examples/github-actions/deploy.yml) runs each job in its
  # GitHub environment, so its OIDC subject is repo:<owner>/<repo>:environment:<name>; each
  # (app, env) role trusts exactly its own environment.
  github_oidc_subjects = {
    "shop/staging"    = ["repo:acme/shop:environment:staging"]
    "shop/production" = ["repo:acme/shop:environment:production"]
  }

  # blog's CI uses its own IAM roles (attach uploader_policy_arns["blog/<env>"] to them);
  # the bucket refuses release writes from anyone not listed for that key.
  uploader_principal_arns = var.blog_uploader_arns

  # Who may change the bucket's protections; empty means whoever runs this Terraform.
  provisioning_principal_arns = var.provisioning_principal_arns

  failure_topic_enabled = true
}
