# Minimal root: one bucket, one deployer, two apps, GitHub OIDC upload role for "shop".
#
#   cargo lambda build --release --arm64 --output-format zip -p deployer-lambda
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

  # The deploy workflow (infra/examples/github-actions/deploy.yml) runs its jobs in GitHub
  # environments, so their OIDC subject is repo:<owner>/<repo>:environment:<name>.
  github_oidc_subjects = {
    shop = [
      "repo:acme/shop:environment:staging",
      "repo:acme/shop:environment:production",
    ]
  }
}
