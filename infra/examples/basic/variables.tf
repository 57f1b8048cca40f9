variable "region" {
  description = "AWS region for the pipeline and the target instances."
  type        = string
  default     = "eu-west-1"
}

variable "bucket_name" {
  description = "Globally unique name for the artifact bucket."
  type        = string
}

variable "lambda_zip_path" {
  description = "Zip built by scripts/package-lambda (relative to this directory by default)."
  type        = string
  default     = "../../../target/lambda/deployer-lambda/bootstrap.zip"
}

variable "access_log_bucket" {
  description = "Existing bucket for S3 server access logs (null disables them)."
  type        = string
  default     = null
}

variable "blog_uploader_arns" {
  description = "Per \"blog/<env>\", the IAM roles blog's CI uploads with."
  type        = map(list(string))
  default     = {}
}

variable "provisioning_principal_arns" {
  description = "Roles allowed to change the bucket's protections (empty: whoever runs Terraform)."
  type        = list(string)
  default     = []
}
